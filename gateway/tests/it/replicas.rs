//! A node with replicas: two echo servers stand in for two replicas of one node at org2's
//! site, reached from org1 through its local listener. Connections spread over both; one
//! replica stopped in the middle of a stream of connections costs at most the connections in
//! flight on it (counted as dial failures), later ones all succeed on the other, and the
//! stopped replica, started again, comes back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use fedgw_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// An echo server on `addr` that counts connections accepted, and stops (listener
/// and open connections) when `stop` is cancelled.
#[derive(Clone)]
struct Replica {
    accepted: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Replica {
    fn start(l: TcpListener) -> Replica {
        let r = Replica {
            accepted: Arc::default(),
            stop: CancellationToken::new(),
        };
        let me = r.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tokio::select! {
                    () = me.stop.cancelled() => return,
                    a = l.accept() => match a { Ok(a) => a, Err(_) => return },
                };
                me.accepted.fetch_add(1, Ordering::SeqCst);
                let me = me.clone();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    tokio::select! {
                        () = me.stop.cancelled() => {}
                        _ = tokio::io::copy(&mut r, &mut w) => { let _ = w.shutdown().await; }
                    }
                });
            }
        });
        r
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Two listeners on one port at two loopback addresses (replicas share the node's ports).
async fn two_listeners() -> (TcpListener, TcpListener) {
    for _ in 0..20 {
        let a = TcpListener::bind("127.79.0.1:0")
            .await
            .expect("bind replica a");
        let port = a.local_addr().expect("addr").port();
        if let Ok(b) = TcpListener::bind(("127.79.0.2", port)).await {
            return (a, b);
        }
    }
    panic!("no port free on both 127.79.0.1 and 127.79.0.2");
}

/// One echo of 4 KiB through `addr`, held open for `hold` first; whether every byte came back.
async fn echo(addr: SocketAddr, seed: u8, hold: Duration) -> bool {
    let data: Vec<u8> = (0..4096u32).map(|i| (i as u8).wrapping_add(seed)).collect();
    let run = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(&data[..1]).await.ok()?;
        tokio::time::sleep(hold).await;
        s.write_all(&data[1..]).await.ok()?;
        s.shutdown().await.ok()?;
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.ok()?;
        Some(back == data)
    };
    tokio::time::timeout(WAIT, run).await.ok().flatten() == Some(true)
}

fn metric(text: &str, name: &str, replica: &str) -> Option<f64> {
    let prefix = format!("{name}{{node=\"ha\",replica=\"{replica}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_replicas_and_skip_a_stopped_one_until_it_is_back() {
    let mut fed = Fed::found_with(fedgw_gateway::config::Admission::Operator, |c| {
        c.tunnel.allow_loopback_targets = true;
    })
    .await;
    fed.add("org2", false, |c| c.tunnel.allow_loopback_targets = true)
        .await;
    fed.converged().await;
    let (la, lb) = two_listeners().await;
    let a_addr = la.local_addr().expect("addr");
    let port = a_addr.port();
    let (a, b) = (Replica::start(la), Replica::start(lb));
    let mut n = spec("ha", 0x51, "127.79.0.1");
    n.replica_hosts = vec!["127.79.0.2".into()];
    n.p2p_port = u32::from(port);
    n.raft_port = 0;
    n.raft_id = 0;
    fed.gws[1]
        .admin()
        .await
        .add_node(pb::AddNodeRequest { node: Some(n) })
        .await
        .expect("add node");
    let at = &fed.gws[0];
    let dns = at.run().info.dns;
    let mut local = None;
    wait_for("a local address for ha.org2", || {
        local = dig(dns, "ha.org2.acme.test", "A", false)
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, port))
            .filter(|addr| at.run().tunnels.listening().contains(addr));
        local.is_some()
    })
    .await;
    let addr = local.expect("local address");

    // spread: round robin over both healthy replicas
    for i in 0..10 {
        assert!(echo(addr, i, Duration::ZERO).await, "echo {i}");
    }
    assert_eq!((a.accepted(), b.accepted()), (5, 5));

    // a stream of connections, four at a time, each held open a little; replica a stops
    // in the middle of it
    let workers: Vec<_> = (0..4u8)
        .map(|w| {
            tokio::spawn(async move {
                let mut failed = 0;
                for i in 0..15u8 {
                    if !echo(addr, w * 16 + i, Duration::from_millis(20)).await {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let before = a.accepted();
    wait_for("the stream of connections to reach replica a", || {
        a.accepted() >= before + 4
    })
    .await;
    a.stop.cancel();
    let mut failed = 0;
    for w in workers {
        failed += w.await.expect("worker");
    }
    // four workers: at most four connections were in flight on replica a when it stopped
    // (open, or accepted by its kernel but not yet by the server); every other one succeeded
    assert!(
        failed <= 4,
        "{failed} of 60 connections failed; at most the 4 in flight on the stopped replica may"
    );
    let metrics = fed.gws[1].run().metrics.clone();
    let text = metrics.encode();
    let failures = metric(
        &text,
        "fedgw_node_replica_dial_failures_total",
        "127.79.0.1",
    );
    assert!(failures.is_some_and(|f| f >= 1.0), "{text}");
    assert_eq!(
        metric(&text, "fedgw_node_replica_up", "127.79.0.1"),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "fedgw_node_replica_up", "127.79.0.2"),
        Some(1.0)
    );
    // the listing shows it down
    let nodes = fed.gws[1]
        .admin()
        .await
        .list_nodes(pb::ListNodesRequest {})
        .await
        .expect("list nodes")
        .into_inner()
        .nodes;
    let ha = nodes.iter().find(|n| n.name == "ha").expect("ha listed");
    let health: Vec<(&str, bool)> = ha
        .replicas
        .iter()
        .map(|r| (r.host.as_str(), r.up))
        .collect();
    assert_eq!(health, [("127.79.0.1", false), ("127.79.0.2", true)]);
    // and so does `fedgw status`
    let status = fed.gws[1].status().await;
    let ha = status
        .replicas
        .iter()
        .find(|n| n.node == "ha")
        .expect("ha in status");
    let health: Vec<(&str, bool)> = ha
        .replicas
        .iter()
        .map(|r| (r.host.as_str(), r.up))
        .collect();
    assert_eq!(health, [("127.79.0.1", false), ("127.79.0.2", true)]);

    // later connections all succeed, on the other replica
    let on_b = b.accepted();
    for i in 0..10 {
        assert!(
            echo(addr, i, Duration::ZERO).await,
            "echo {i} after the stop"
        );
    }
    assert_eq!(b.accepted(), on_b + 10);

    // started again, the replica comes back within a few checks and takes its turn again
    let again = TcpListener::bind(a_addr)
        .await
        .expect("bind replica a again");
    let a2 = Replica::start(again);
    let far = fed.gws[1].run().tunnels.clone();
    wait_for("replica a back up", || {
        far.replica_status()
            .get("ha")
            .is_some_and(|h| h.iter().all(|(_, up)| *up))
    })
    .await;
    // the check that found it up was a connection too
    let checks = a2.accepted();
    for i in 0..4 {
        assert!(
            echo(addr, i, Duration::ZERO).await,
            "echo {i} after the restart"
        );
    }
    assert_eq!(a2.accepted() - checks, 2);
    let text = metrics.encode();
    assert_eq!(
        metric(&text, "fedgw_node_replica_up", "127.79.0.1"),
        Some(1.0)
    );
    fed.stop_all().await;
}
