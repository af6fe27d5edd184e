//! The data plane across three in-process gateways: local listeners found with the gateway's
//! DNS, byte-exact echo through QUIC and TCP+TLS tunnels with half-close, an HTTP upcheck with
//! curl, every refusal the far end owes, revocation cutting live connections, a narrowed access
//! policy ending the connections it leaves out, one member's share of the far end's connections,
//! node removal closing listeners, an outbound-only site reached over its own link, local clients
//! outside `tunnel.allowed_sources` reset at the near end, and readers that stop reading reset
//! after the stall time-out so the link carries other streams again.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;
use fedgw_gateway::config::Config;
use fedgw_gateway::membership::GatewayId;
use fedgw_gateway::tunnel::Transport;
use fedgw_gateway::tunnel::class::Class;
use fedgw_gateway::tunnel::header::{Answer, Request};
use fedgw_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP server standing in for a Tessera P2P endpoint: `GET /upcheck` → `I'm up!`.
async fn upcheck_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut have = 0;
                while !buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                }
                let ok = buf[..have].starts_with(b"GET /upcheck ");
                let resp: &[u8] = if ok {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nI'm up!"
                } else {
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                let _ = s.write_all(resp).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Per-org pool, the transport, loopback targets allowed (the stand-ins run on 127.0.0.1).
fn site(i: u8, transport: Transport) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.addresses = fedgw_gateway::addressing::AddressMode::Ip {
            pool: format!("127.78.{i}.0/24"),
            interface: None,
        };
        c.tunnel.transport = transport;
        c.tunnel.allow_loopback_targets = true;
        // the echo load must not starve membership heartbeats into reconnects, which would
        // blur the file-descriptor count
        c.sync.heartbeat_ms = 2000;
    }
}

async fn federation(transport: Transport, org3_outbound: bool, org3_loopback: bool) -> Fed {
    let mut fed = Fed::found_with(pb_admission(), site(1, transport)).await;
    fed.add("org2", false, site(2, transport)).await;
    fed.add("org3", org3_outbound, |c| {
        site(3, transport)(c);
        c.tunnel.allow_loopback_targets = org3_loopback;
    })
    .await;
    fed.converged().await;
    fed
}

fn pb_admission() -> fedgw_gateway::config::Admission {
    fedgw_gateway::config::Admission::Operator
}

fn node(name: &str, enode: u8, p2p: u16) -> pb::NodeSpec {
    let mut n = spec(name, enode, "127.0.0.1");
    n.p2p_port = u32::from(p2p);
    n.raft_port = 0;
    n.raft_id = 0;
    n
}

async fn add(gw: &Gw, n: pb::NodeSpec) {
    gw.admin()
        .await
        .add_node(pb::AddNodeRequest { node: Some(n) })
        .await
        .expect("add node");
}

/// Waits until `at`'s DNS answers `name` and `at` listens on that address and `port`.
async fn local_address(at: &Gw, name: &str, port: u16) -> SocketAddr {
    let dns = at.run().info.dns;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(ip) = dig(dns, name, "A", false).parse::<std::net::IpAddr>() {
            let addr = SocketAddr::new(ip, port);
            if at.run().tunnels.listening().contains(&addr) {
                return addr;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no local address for {name} at {}",
            at.org
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sockets of this process, other than listeners, with `addrs` at either end: the client
/// and node sides of proxied connections.
fn proxied_sockets(addrs: &[SocketAddr]) -> usize {
    let out = Command::new("ss")
        .args(["-tanp", "state", "connected"])
        .output()
        .expect("ss (iproute2)");
    let me = format!("pid={},", std::process::id());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&me))
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            addrs
                .iter()
                .any(|a| cols.iter().any(|c| *c == a.to_string()))
        })
        .count()
}

/// Echoes `len` bytes through `addr`, half-closing after the last byte, and checks them.
async fn echo_once(addr: SocketAddr, seed: u8, len: usize) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect local address");
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("half-close");
    };
    let read = async {
        let mut back = Vec::with_capacity(len);
        r.read_to_end(&mut back).await.expect("read");
        back
    };
    let ((), back) = tokio::join!(write, read);
    assert_eq!(back.len(), len, "echo length");
    assert!(back == data, "echo bytes differ");
}

async fn echo_many(transport: Transport) {
    let mut fed = federation(transport, false, true).await;
    let echo = echo_server().await;
    add(&fed.gws[1], node("node1", 0x21, echo.port())).await;
    let addr = local_address(&fed.gws[0], "node1.org2.acme.test", echo.port()).await;

    // warm up: the tunnel exists, then take the baselines
    echo_once(addr, 0, 1024).await;
    let peer = GatewayId::new("org2", "dc1");
    let want = match transport {
        Transport::Tcp => "tcp",
        _ => "quic",
    };
    assert_eq!(fed.gws[0].run().tunnels.link_transport(&peer), Some(want));
    let metrics = [&fed.gws[0], &fed.gws[1]].map(|g| g.run().metrics.clone());
    wait_for("warm-up connection closed", || {
        metrics.iter().all(|m| m.tunnel_active_streams() == 0)
    })
    .await;
    // every site keeps its links up: take the baselines once the mesh is complete
    wait_for("a full mesh of tunnels", || {
        fed.gws.iter().all(|g| g.run().tunnels.link_count() == 2)
    })
    .await;
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();

    let mut all = tokio::task::JoinSet::new();
    for i in 0..100u8 {
        all.spawn(echo_once(addr, i, 1 << 20));
    }
    while let Some(r) = all.join_next().await {
        r.expect("echo task");
    }
    assert!(metrics[0].tunnel_connections_total("org2", "outbound") >= 101);
    assert!(metrics[1].tunnel_connections_total("org1", "inbound") >= 101);
    wait_for("every byte counted", || {
        let sent = 100 * (1 << 20) + 1024;
        let (near, far) = (
            metrics[0].tunnel_counters("org2", Class::Bulk),
            metrics[1].tunnel_counters("org1", Class::Bulk),
        );
        [near.tx.get(), near.rx.get(), far.tx.get(), far.rx.get()] == [sent; 4]
    })
    .await;
    // the echo stands in on the p2p port: bulk, at both ends
    for m in &metrics {
        let bulk = m.tunnel_class_totals(Class::Bulk);
        assert_eq!(bulk.bytes, 100 * (1 << 20) + 1024, "{bulk:?}");
        assert!(bulk.writes > 0 && bulk.max_wait_us >= bulk.wait_sum_us / bulk.writes);
        assert_eq!(m.tunnel_class_totals(Class::Consensus).bytes, 0);
    }

    wait_for("no proxied connection left", || {
        metrics.iter().all(|m| m.tunnel_active_streams() == 0)
    })
    .await;
    // `fedgw status` shows the link with its path (QUIC: a confirmed MTU of at least QUIC's
    // 1200-byte minimum, at most the discovery bound)
    let status = fed.gws[0].status().await;
    let link = status
        .tunnels
        .iter()
        .find(|t| t.org == "org2")
        .expect("a link to org2 in status");
    assert_eq!(link.transport, want);
    let classes: Vec<(&str, u64)> = status
        .classes
        .iter()
        .map(|c| (c.class.as_str(), c.bytes))
        .collect();
    assert_eq!(classes.len(), 3, "{classes:?}");
    assert_eq!(classes[0], ("consensus", 0));
    assert!(
        classes[2] == ("bulk", 100 * (1 << 20) + 1024),
        "{classes:?}"
    );
    if want == "quic" {
        assert!(
            (1200..=u32::from(fedgw_gateway::tunnel::quic::MTU_UPPER_BOUND))
                .contains(&link.path_mtu),
            "{link:?}"
        );
        assert!(link.rtt_ms > 0.0, "{link:?}");
    } else {
        assert_eq!((link.path_mtu, link.lost_packets), (0, 0), "{link:?}");
    }
    wait_for("no socket of a proxied connection left open", || {
        proxied_sockets(&[echo, addr]) == 0
    })
    .await;
    // other subsystems (membership sync sessions) may start a few tasks meanwhile; a task
    // leaked per proxied connection would show as a hundred
    wait_for("no leaked tasks", || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
            <= tasks + 16
    })
    .await;
    fed.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_connections_echo_a_mebibyte_each_over_quic() {
    echo_many(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_connections_echo_a_mebibyte_each_over_tcp_fallback() {
    echo_many(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tessera_upcheck_answers_through_the_tunnel() {
    let mut fed = federation(Transport::Auto, false, true).await;
    let http = upcheck_server().await;
    let mut n = node("tm1", 0x31, 0);
    n.p2p_port = 0;
    n.tessera_url = format!("http://127.0.0.1:{}", http.port());
    n.tessera_keys = vec![vec![0x31; 32]];
    add(&fed.gws[1], n).await;
    let addr = local_address(&fed.gws[2], "tm1.org2.acme.test", http.port()).await;
    let url = format!("http://{addr}/upcheck");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", &url])
            .output()
            .expect("curl must be installed (scripts/test installs it)")
    })
    .await
    .expect("curl task");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "I'm up!");
    fed.stop_all().await;
}

/// Opens a raw stream from `from` to `to`'s site, sends `bytes`, and reads the answer. A
/// refusal comes at once; `Accepted` comes with the node's first bytes, so a stream meant to
/// be accepted sends the echo node something to answer after its header.
async fn raw_answer(from: &Gw, to: &str, bytes: &[u8], finish: bool) -> Option<Answer> {
    let peer = GatewayId::new(to, "dc1");
    let stream = from.run().tunnels.open(&peer).await.expect("open stream");
    let (mut r, mut w) = stream.split();
    w.write_all(bytes).await.expect("send header");
    if finish {
        w.finish().await.expect("finish");
    }
    tokio::time::timeout(Duration::from_secs(10), r.answer())
        .await
        .expect("an answer within the header timeout")
        .ok()
}

fn header(org: &str, node: &str, port: &str) -> Vec<u8> {
    Request::new(org, node, port).expect("valid").encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_far_gateway_refuses_what_it_must() {
    // org3 does not allow loopback targets
    let mut fed = federation(Transport::Auto, false, false).await;
    let echo = echo_server().await;
    add(&fed.gws[1], node("node1", 0x41, echo.port())).await;
    let mut tm = node("tm", 0x42, echo.port());
    tm.allowed_orgs = vec!["org3".into()];
    add(&fed.gws[1], tm).await;
    // a node registered on org2's own metrics port
    let metrics_port = fed.gws[1].run().info.metrics.port();
    add(&fed.gws[1], node("sneaky", 0x43, metrics_port)).await;
    // org3 does not allow loopback: its node on 127.0.0.1 is never dialled
    add(&fed.gws[2], node("lo", 0x44, echo.port())).await;
    fed.converged().await;
    wait_for("org2 serves its nodes", || {
        fed.gws[2].run().tunnels.listening().len() >= 3
    })
    .await;
    // listeners follow the view on their own time: org2's for org3's node as well
    wait_for("org2 listens for org3's node", || {
        !fed.gws[1].run().tunnels.listening().is_empty()
    })
    .await;
    let (org1, org3) = (&fed.gws[0], &fed.gws[2]);

    let ping = |h: Vec<u8>| [h, b"ping".to_vec()].concat();
    let ok = raw_answer(org1, "org2", &ping(header("org2", "node1", "p2p")), false).await;
    assert_eq!(ok, Some(Answer::Accepted));
    let cases: [(&Gw, &str, Vec<u8>, Answer); 9] = [
        (
            org1,
            "org2",
            header("org2", "nobody", "p2p"),
            Answer::UnknownNode,
        ),
        (
            org1,
            "org2",
            header("org3", "lo", "p2p"),
            Answer::UnknownNode,
        ),
        (
            org1,
            "org2",
            header("org2", "node1", "raft"),
            Answer::UnknownPort,
        ),
        (
            org1,
            "org2",
            header("org2", "tm", "p2p"),
            Answer::PolicyDenied,
        ),
        (
            org1,
            "org2",
            header("org2", "sneaky", "p2p"),
            Answer::ForbiddenTarget,
        ),
        (
            org1,
            "org3",
            header("org3", "lo", "p2p"),
            Answer::ForbiddenTarget,
        ),
        (
            org1,
            "org2",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            Answer::BadHeader,
        ),
        (org1, "org2", vec![1, 200, b'a'], Answer::BadHeader),
        (
            org1,
            "org2",
            header("org2", "node1", "p2p")[..6].to_vec(),
            Answer::BadHeader,
        ),
    ];
    for (i, (from, to, bytes, want)) in cases.into_iter().enumerate() {
        // the truncated header is finished, so the far end sees its end of stream
        let got = raw_answer(from, to, &bytes, i == 8).await;
        assert_eq!(got, Some(want), "case {i}");
    }
    assert_eq!(
        raw_answer(org3, "org2", &ping(header("org2", "tm", "p2p")), false).await,
        Some(Answer::Accepted),
        "the policy lets org3 in"
    );
    let m = &fed.gws[1].run().metrics;
    assert_eq!(m.tunnel_refused_total(Answer::UnknownNode), 2);
    assert_eq!(m.tunnel_refused_total(Answer::BadHeader), 3);
    assert_eq!(m.tunnel_refused_total(Answer::PolicyDenied), 1);
    assert_eq!(
        fed.gws[2]
            .run()
            .metrics
            .tunnel_refused_total(Answer::ForbiddenTarget),
        1
    );
    // and `fedgw status` shows them, with the live links
    let status = fed.gws[1].status().await;
    assert_eq!(status.refused_streams.get("unknown_node"), Some(&2));
    assert_eq!(status.refused_streams.get("bad_header"), Some(&3));
    assert!(
        status.tunnels.iter().any(|t| t.org == "org1"),
        "{:?}",
        status.tunnels
    );
    assert_eq!(
        status.listeners, 1,
        "org2 listens for the p2p port of org3's node"
    );
    fed.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_cuts_live_connections_within_a_second_and_removal_closes_listeners() {
    revocation_and_removal(Transport::Auto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_cuts_live_connections_within_a_second_over_tcp_fallback() {
    revocation_and_removal(Transport::Tcp).await;
}

/// Registers org2's node1 on a fresh echo server and opens a live connection to it from org3
/// and one from org1, each echoed once: `(org3's, org1's, org1's local address for node1)`.
async fn live_connections_to_node1(fed: &Fed, enode: u8) -> (TcpStream, TcpStream, SocketAddr) {
    let echo = echo_server().await;
    add(&fed.gws[1], node("node1", enode, echo.port())).await;
    let at3 = local_address(&fed.gws[2], "node1.org2.acme.test", echo.port()).await;
    let at1 = local_address(&fed.gws[0], "node1.org2.acme.test", echo.port()).await;
    let mut c3 = TcpStream::connect(at3).await.expect("connect");
    let mut c1 = TcpStream::connect(at1).await.expect("connect");
    for c in [&mut c3, &mut c1] {
        c.write_all(b"ping").await.expect("write");
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.expect("echo");
    }
    (c3, c1, at1)
}

/// `c3` ends within `within`, while `c1` still echoes.
async fn org3_ends_org1_stays(c3: &mut TcpStream, c1: &mut TcpStream, within: Duration) {
    let mut b = [0u8; 1];
    let read = tokio::time::timeout(within, c3.read(&mut b)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "org3's connection must end within {within:?}: {read:?}"
    );
    c1.write_all(b"pong").await.expect("write");
    let mut b4 = [0u8; 4];
    c1.read_exact(&mut b4).await.expect("org1 still connected");
    assert_eq!(&b4, b"pong");
}

async fn revocation_and_removal(transport: Transport) {
    let mut fed = federation(transport, false, true).await;
    let (mut c3, mut c1, at1) = live_connections_to_node1(&fed, 0x51).await;

    fed.gws[0]
        .admin()
        .await
        .revoke(pb::RevokeRequest {
            org: "org3".into(),
            reason: "test".into(),
        })
        .await
        .expect("revoke");
    let revoked_at = Instant::now();
    // org3's connection ends within 1 s of the revocation; org1's is unaffected
    org3_ends_org1_stays(&mut c3, &mut c1, Duration::from_secs(1)).await;
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // removing the node closes every listener for it (and its connections)
    fed.gws[1]
        .admin()
        .await
        .remove_node(pb::RemoveNodeRequest {
            name: "node1".into(),
        })
        .await
        .expect("remove");
    wait_for("org1 stops listening for node1", || {
        !fed.gws[0].run().tunnels.listening().contains(&at1)
    })
    .await;
    assert!(
        TcpStream::connect(at1).await.is_err(),
        "the listener is closed"
    );
    fed.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_leaves_a_caller_out_ends_its_live_connections() {
    let mut fed = federation(Transport::Auto, false, true).await;
    let (mut c3, mut c1, at1) = live_connections_to_node1(&fed, 0x61).await;

    // org2 narrows node1 to org1: org3's near end still listens (routes do not follow the
    // policy), so only the far end can end org3's connection
    // (IP mode: the local address carries the node's own port)
    let mut narrowed = node("node1", 0x61, at1.port());
    narrowed.allowed_orgs = vec!["org1".into()];
    add(&fed.gws[1], narrowed).await;
    org3_ends_org1_stays(&mut c3, &mut c1, Duration::from_secs(5)).await;
    // new connections from org1 still go through
    echo_once(at1, 9, 4096).await;
    // a new connection from org3 is refused at the far end
    assert_eq!(
        raw_answer(&fed.gws[2], "org2", &header("org2", "node1", "p2p"), false).await,
        Some(Answer::PolicyDenied)
    );
    fed.stop_all().await;
}

/// A node that resets every connection as it arrives, before sending a byte.
async fn resetting_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_zero_linger();
            drop(s);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_resets_before_answering_ends_the_clients_connection_over_tcp_fallback() {
    let mut fed = federation(Transport::Tcp, false, true).await;
    let node_addr = resetting_server().await;
    add(&fed.gws[1], node("rst", 0x72, node_addr.port())).await;
    let at1 = local_address(&fed.gws[0], "rst.org2.acme.test", node_addr.port()).await;
    let mut checked = 0;
    for _ in 0..50 {
        if checked == 3 {
            break;
        }
        // the near end may reset the client before its connect returns
        let Ok(mut c) = TcpStream::connect(at1).await else {
            continue;
        };
        checked += 1;
        let _ = c.write_all(b"hello").await;
        let mut b = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the client's connection must end with the node's: {read:?}"
        );
    }
    assert_eq!(checked, 3, "three connections got past connect");
    fed.stop_all().await;
}

/// Writes `ping` on a new connection to `addr` and reads it back; `false` when the connection
/// ends or fails first.
async fn ping(addr: SocketAddr) -> bool {
    let Ok(mut c) = TcpStream::connect(addr).await else {
        return false;
    };
    let mut b = [0u8; 4];
    let echoed = async {
        c.write_all(b"ping").await?;
        c.read_exact(&mut b).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), echoed).await,
        Ok(Ok(_))
    ) && &b == b"ping"
}

/// A node that accepts connections and never reads them (a hung process whose sockets stay
/// open); with `send`, it instead writes to each until the write fails.
async fn stuck_server(send: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            if send {
                tokio::spawn(async move {
                    let chunk = vec![0x5au8; 1 << 20];
                    while s.write_all(&chunk).await.is_ok() {}
                });
            } else {
                held.push(s);
            }
        }
    });
    addr
}

/// Writes to `c` until a write fails; `Err` if that takes longer than `within`.
async fn write_until_cut(c: &mut TcpStream, within: Duration) -> Result<u64, ()> {
    let chunk = vec![0xa5u8; 1 << 20];
    let mut sent = 0u64;
    let run = async {
        while c.write_all(&chunk).await.is_ok() {
            sent += chunk.len() as u64;
        }
    };
    tokio::time::timeout(within, run).await.map_err(|_| ())?;
    Ok(sent)
}

/// Nine clients push bytes at a node that reads nothing: more than a link's 64 MiB window in
/// all, so without the stall time-out every other stream from org1 to org2 would wait behind
/// them for good. Each is reset once the far end's writes to the node have waited the
/// time-out, and the link carries an echo again. Then the other way round: a node that sends
/// to a client that reads nothing has its connection reset at the near end.
async fn stalled_readers_are_reset(transport: Transport) {
    let stall = |i: u8| {
        move |c: &mut Config| {
            site(i, transport)(c);
            c.tunnel.stall_timeout_ms = 2000;
        }
    };
    let mut fed = Fed::found_with(pb_admission(), stall(1)).await;
    fed.add("org2", false, stall(2)).await;
    fed.converged().await;
    let deaf = stuck_server(false).await;
    let echo = echo_server().await;
    add(&fed.gws[1], node("deaf", 0x73, deaf.port())).await;
    add(&fed.gws[1], node("node1", 0x74, echo.port())).await;
    let at_deaf = local_address(&fed.gws[0], "deaf.org2.acme.test", deaf.port()).await;
    let at_echo = local_address(&fed.gws[0], "node1.org2.acme.test", echo.port()).await;
    echo_once(at_echo, 1, 1024).await;

    let mut pushers = tokio::task::JoinSet::new();
    for _ in 0..9 {
        let mut c = TcpStream::connect(at_deaf).await.expect("connect");
        pushers.spawn(async move { write_until_cut(&mut c, Duration::from_secs(30)).await });
    }
    let mut pushed = 0;
    while let Some(r) = pushers.join_next().await {
        pushed += r
            .expect("pusher task")
            .expect("a client writing to a node that reads nothing is cut");
    }
    assert!(
        pushed > 64 << 20,
        "the clients filled more than the link's window before they were cut: {pushed} bytes"
    );
    let far = &fed.gws[1].run().metrics;
    wait_for("nine stalled connections counted at the far end", || {
        far.tunnel_stalled_total("far") == 9
    })
    .await;
    echo_once(at_echo, 2, 1 << 20).await;

    // a client that stops reading a node's bytes is reset at the near end
    let firehose = stuck_server(true).await;
    add(&fed.gws[1], node("firehose", 0x75, firehose.port())).await;
    let at_firehose = local_address(&fed.gws[0], "firehose.org2.acme.test", firehose.port()).await;
    let mut c = TcpStream::connect(at_firehose).await.expect("connect");
    let near = &fed.gws[0].run().metrics;
    wait_for("the stalled client counted at the near end", || {
        near.tunnel_stalled_total("near") == 1
    })
    .await;
    // what was queued for it reads out, then the reset
    let mut sink = Vec::new();
    let drained = tokio::time::timeout(WAIT, c.read_to_end(&mut sink)).await;
    assert!(
        matches!(drained, Ok(Err(_))),
        "the near end resets the client's connection: {drained:?}"
    );
    echo_once(at_echo, 3, 1 << 20).await;
    // `fedgw status` shows both
    let status = fed.gws[0].status().await;
    assert_eq!(status.stalled_connections.get("near"), Some(&1));
    assert_eq!(status.stalled_connections.get("far"), None);
    let status = fed.gws[1].status().await;
    assert_eq!(status.stalled_connections.get("far"), Some(&9));
    fed.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_are_reset_and_the_link_carries_other_streams_over_quic() {
    stalled_readers_are_reset(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_are_reset_and_the_link_carries_other_streams_over_tcp_fallback() {
    stalled_readers_are_reset(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_cannot_take_every_connection_the_far_end_serves() {
    let t = Transport::Auto;
    let mut fed = Fed::found_with(pb_admission(), site(1, t)).await;
    fed.add("org2", false, |c| {
        site(2, t)(c);
        c.tunnel.max_connections_per_org = Some(2);
    })
    .await;
    fed.add("org3", false, site(3, t)).await;
    fed.converged().await;
    let echo = echo_server().await;
    add(&fed.gws[1], node("node1", 0x71, echo.port())).await;
    let at1 = local_address(&fed.gws[0], "node1.org2.acme.test", echo.port()).await;
    let at3 = local_address(&fed.gws[2], "node1.org2.acme.test", echo.port()).await;

    // org1 holds its share of org2's connections
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(at1).await.expect("connect");
        c.write_all(b"ping").await.expect("write");
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.expect("echo");
        held.push(c);
    }
    // a third is refused at the far end, and the near end ends the client's connection
    assert!(!ping(at1).await, "org1's third connection must be refused");
    // org3 is not affected by org1's use
    assert!(ping(at3).await, "org3 still reaches node1");
    echo_once(at3, 3, 64 * 1024).await;
    // once org1 lets one go, it connects again
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ping(at1).await {
        assert!(
            Instant::now() < deadline,
            "org1 connects again once it let one go"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fed.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_only_site_is_reachable_over_its_own_link() {
    let mut fed = federation(Transport::Auto, true, true).await;
    let echo = echo_server().await;
    add(&fed.gws[2], node("node1", 0x61, echo.port())).await;
    let addr = local_address(&fed.gws[0], "node1.org3.acme.test", echo.port()).await;
    echo_once(addr, 7, 64 * 1024).await;
    // and org3's clients reach org1 the same way
    let echo1 = echo_server().await;
    add(&fed.gws[0], node("node9", 0x62, echo1.port())).await;
    let addr = local_address(&fed.gws[2], "node9.org1.acme.test", echo1.port()).await;
    echo_once(addr, 9, 64 * 1024).await;
    fed.stop_all().await;
}

/// A client socket on `from` (a loopback address other than 127.0.0.1) connected to `to`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse().expect("ip"), 0))?;
    socket.connect(to).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_the_allowed_sources_are_reset_before_a_stream_opens() {
    let transport = Transport::Auto;
    let mut fed = Fed::found_with(pb_admission(), |c| {
        site(1, transport)(c);
        c.tunnel.allowed_sources = vec!["127.0.0.2".parse().expect("source")];
    })
    .await;
    fed.add("org2", false, site(2, transport)).await;
    fed.converged().await;
    // the node counts the connections that reach it
    let node_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind node");
    let node_addr = node_listener.local_addr().expect("addr");
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reached.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = node_listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    add(&fed.gws[1], node("node1", 0x71, node_addr.port())).await;
    let at1 = local_address(&fed.gws[0], "node1.org2.acme.test", node_addr.port()).await;

    // from 127.0.0.3: reset (while connecting or on the first read), nothing reaches the node
    let mut b = [0u8; 4];
    let outcome = tokio::time::timeout(WAIT, async {
        let mut outsider = connect_from("127.0.0.3", at1).await?;
        let _ = outsider.write_all(b"ping").await;
        outsider.read(&mut b).await
    })
    .await
    .expect("the refusal comes at once");
    assert!(
        matches!(&outcome, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a client outside the allowed sources is reset: {outcome:?}"
    );
    let m = &fed.gws[0].run().metrics;
    assert_eq!(
        m.tunnel_refused_label_total(fedgw_gateway::tunnel::near::SOURCE_NOT_ALLOWED),
        1
    );

    // from 127.0.0.2: through to the node and back
    let mut insider = connect_from("127.0.0.2", at1).await.expect("connect");
    insider.write_all(b"ping").await.expect("write");
    insider.read_exact(&mut b).await.expect("echo");
    assert_eq!(&b, b"ping");
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the allowed client reached the node"
    );
    let status = fed.gws[0].status().await;
    assert_eq!(status.refused_streams.get("source_not_allowed"), Some(&1));
    // other sites are not restricted by org1's list: org2's clients reach org1's nodes
    let echo1 = echo_server().await;
    add(&fed.gws[0], node("node9", 0x72, echo1.port())).await;
    let at2 = local_address(&fed.gws[1], "node9.org1.acme.test", echo1.port()).await;
    echo_once(at2, 3, 4096).await;
    fed.stop_all().await;
}

/// The id of `at`'s link to org2 that takes new streams, if any.
fn current_link(at: &Gw) -> Option<u64> {
    at.run()
        .tunnels
        .links()
        .into_iter()
        .find(|l| l.peer.org == "org2" && !l.retired)
        .map(|l| l.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_retire_at_their_maximum_age_and_close_at_twice_it() {
    link_ageing(Transport::Auto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_retire_and_close_by_age_over_tcp_fallback() {
    link_ageing(Transport::Tcp).await;
}

async fn link_ageing(transport: Transport) {
    // new streams use a link for 3 s; it closes, with what it still carries, at 6 s
    let aged = |i: u8| {
        move |c: &mut Config| {
            site(i, transport)(c);
            c.tunnel.max_link_ms = Some(3000);
        }
    };
    let mut fed = Fed::found_with(pb_admission(), aged(1)).await;
    fed.add("org2", false, aged(2)).await;
    fed.converged().await;
    let echo = echo_server().await;
    add(&fed.gws[1], node("node1", 0x81, echo.port())).await;
    let at1 = local_address(&fed.gws[0], "node1.org2.acme.test", echo.port()).await;

    // a connection known to run over link `first`
    let deadline = Instant::now() + WAIT;
    let (mut c1, first) = loop {
        assert!(
            Instant::now() < deadline,
            "no stable link to open a connection on"
        );
        echo_once(at1, 1, 16).await; // makes sure a link is up
        let Some(before) = current_link(&fed.gws[0]) else {
            continue;
        };
        let mut c = TcpStream::connect(at1).await.expect("connect");
        c.write_all(b"ping").await.expect("write");
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.expect("echo");
        if current_link(&fed.gws[0]) == Some(before) {
            break (c, before);
        }
    };

    // org1 keeps the link to org2 up: once `first` retires it dials the next one
    wait_for("a new link replaces the retired one", || {
        current_link(&fed.gws[0]).is_some_and(|id| id != first)
    })
    .await;
    // the retired link still carries the connection it had; new connections use the new one
    c1.write_all(b"pong").await.expect("write");
    let mut b = [0u8; 4];
    c1.read_exact(&mut b)
        .await
        .expect("a retired link keeps its streams");
    assert_eq!(&b, b"pong");
    echo_once(at1, 2, 64 * 1024).await;

    // and at twice the age the old link closes, ending the connection with it
    let mut one = [0u8; 1];
    let end = tokio::time::timeout(WAIT, c1.read(&mut one))
        .await
        .expect("the old link closes within twice its age");
    assert!(
        matches!(end, Ok(0) | Err(_)),
        "the connection ends with its link: {end:?}"
    );
    echo_once(at1, 3, 4096).await;
    fed.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_only_site_stays_reachable_after_the_other_side_retires_its_link() {
    // org1 retires links after 1 s; org3 (outbound-only, so never dialled) keeps its own
    // schedule (half the leaf lifetime), so org1 must go on using org3's link
    let mut fed = Fed::found_with(pb_admission(), |c| {
        site(1, Transport::Auto)(c);
        c.tunnel.max_link_ms = Some(1000);
    })
    .await;
    fed.add("org3", true, site(3, Transport::Auto)).await;
    fed.converged().await;
    let echo = echo_server().await;
    add(&fed.gws[1], node("node1", 0x91, echo.port())).await;
    let addr = local_address(&fed.gws[0], "node1.org3.acme.test", echo.port()).await;
    // org1 cannot dial org3: it waits for org3's link
    wait_for("org3 dials org1", || {
        fed.gws[0]
            .run()
            .tunnels
            .links()
            .iter()
            .any(|l| l.peer.org == "org3")
    })
    .await;
    echo_once(addr, 1, 4096).await;
    let link_to_org3 = || {
        fed.gws[0]
            .run()
            .tunnels
            .links()
            .into_iter()
            .find(|l| l.peer.org == "org3")
    };
    wait_for("org1's link to org3 retires", || {
        link_to_org3().is_some_and(|l| l.retired)
    })
    .await;
    let retired = link_to_org3().expect("link").id;
    echo_once(addr, 2, 4096).await;
    // nor does org1 close it at twice its age (2 s): only org3's certificate bounds it
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(link_to_org3().map(|l| l.id), Some(retired));
    echo_once(addr, 3, 4096).await;
    fed.stop_all().await;
}
