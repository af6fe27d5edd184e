//! A peer gateway that crashes and comes back, with real processes: org2's gateway is
//! SIGKILLed while org1 proxies to a node at org2, and restarted on the same port. Over QUIC
//! (the restarted endpoint resets org1's stale link at its first packet) and over TCP+TLS (org1
//! redials), the first proxied echo from org1 after org2 is ready succeeds within the bound,
//! and a connection opened during the outage is held and answered once org2 is back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fedgw_gateway::config::Config;
use fedgw_gateway::tunnel::Transport;
use fedgw_tests::{Gateway, wait_for};

use crate::common::procs::{NET, fedgw, s};

/// The time the goal allows from a restarted gateway's readiness to the first proxied
/// connection that works (2 s wanted, 3 s required).
const RECOVERY_BOUND: Duration = Duration::from_secs(3);

/// How long org1 holds a connection while org2 is down: far above the outage (2 s) and a
/// restart on a busy machine, so only a refusal (no hold) fails the test.
const HOLD_MS: u64 = 20_000;

pub(crate) fn edit(dir: &Path, f: impl FnOnce(&mut Config)) {
    let path = dir.join("fedgw.toml");
    let mut c = Config::load(&path).expect("config");
    f(&mut c);
    std::fs::write(&path, c.to_toml()).expect("write config");
}

/// A TCP echo server on 127.0.0.1 (a node's p2p port) in a thread of its own.
pub(crate) fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Connects to `addr`, sends `msg` and reads it back within `within`.
pub(crate) fn echo(addr: SocketAddr, msg: &[u8], within: Duration) -> std::io::Result<()> {
    let mut c = TcpStream::connect_timeout(&addr, within)?;
    c.set_read_timeout(Some(within))?;
    c.write_all(msg)?;
    read_back(&mut c, msg)
}

fn read_back(c: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let mut got = vec![0u8; msg.len()];
    c.read_exact(&mut got)?;
    if got != msg {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

/// org1's local address for org2's node1 (p2p port), once org1 lists it.
fn local_address(dir: &Path) -> Option<SocketAddr> {
    local_address_of(dir, "node1")
}

/// The local address at the gateway of `dir` for the remote node `name` (p2p port).
pub(crate) fn local_address_of(dir: &Path, name: &str) -> Option<SocketAddr> {
    let run = fedgw()
        .run(["nodes", "--json", "--data-dir", &s(dir)])
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
    let n = v.as_array()?.iter().find(|n| n["name"] == name)?;
    let ip = n["local_ip"].as_str()?.parse().ok()?;
    let port = u16::try_from(n["local_ports"]["p2p"].as_u64()?).ok()?;
    Some(SocketAddr::new(ip, port))
}

pub(crate) fn sigkill(gw: Gateway) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // reaps the process
    drop(gw);
}

/// Two gateways (org1 founds, org2 joins) advertising `host:0` (the bound port), with
/// `transport`, a hold of [`HOLD_MS`] and address pools `127.<pool>.<org>.0/24`, both running.
fn federation(
    tmp: &Path,
    host: &str,
    transport: Transport,
    pool: u8,
) -> (PathBuf, Gateway, PathBuf, Gateway) {
    let (d1, d2) = (tmp.join("org1"), tmp.join("org2"));
    let mut net = NET.map(String::from);
    net[1] = format!("{host}:0");
    let mut args = vec![
        "init".to_owned(),
        "--consortium".into(),
        "acme".into(),
        "--domain".into(),
        "acme.test".into(),
        "--org".into(),
        "org1".into(),
        "--data-dir".into(),
        s(&d1),
    ];
    args.extend(net.clone());
    fedgw().run(&args).expect("spawn").ok().expect("init");
    let site = |i: u8| {
        move |c: &mut Config| {
            c.sync.heartbeat_ms = 200;
            c.sync.backoff_base_ms = 50;
            c.sync.backoff_max_ms = 500;
            c.tunnel.transport = transport;
            c.tunnel.allow_loopback_targets = true;
            c.tunnel.connect_hold_ms = HOLD_MS;
            c.addresses = fedgw_gateway::addressing::AddressMode::Ip {
                pool: format!("127.{pool}.{i}.0/24"),
                interface: None,
            };
        }
    };
    edit(&d1, site(1));
    let org1 = fedgw().start(&d1).expect("org1");
    let token = fedgw()
        .run(["invite", "org2", "--data-dir", &s(&d1)])
        .expect("spawn")
        .ok()
        .expect("invite");
    let mut args = vec![
        "join".to_owned(),
        token.stdout.trim().to_owned(),
        "--org".into(),
        "org2".into(),
        "--data-dir".into(),
        s(&d2),
    ];
    args.extend(net);
    fedgw().run(&args).expect("spawn").ok().expect("join");
    edit(&d2, site(2));
    let org2 = fedgw().start(&d2).expect("org2");
    (d1, org1, d2, org2)
}

/// Registers node1 at org2 (a TCP echo server on 127.0.0.1) and returns org1's local address
/// for it once an echo goes through.
fn echo_node(d1: &Path, d2: &Path) -> SocketAddr {
    echo_node_at(d1, &[d2])
}

/// Registers node1 (a TCP echo server on 127.0.0.1) at each gateway of `at` (replicas of one
/// site) and returns the local address at `d1` for it once an echo goes through.
pub(crate) fn echo_node_at(d1: &Path, at: &[&Path]) -> SocketAddr {
    let node = echo_server();
    for d2 in at {
        fedgw()
            .run([
                "node",
                "add",
                "node1",
                "--data-dir",
                &s(d2),
                "--enode",
                &format!(
                    "enode://{}@127.0.0.1:{}?discport=0",
                    fedgw_tests::enode_id(0x5a),
                    node.port()
                ),
            ])
            .expect("spawn")
            .ok()
            .expect("node add");
    }
    let addr = wait_for("org1's address for node1", Duration::from_secs(30), || {
        local_address(d1)
    })
    .expect("listed");
    wait_for(
        "an echo through the tunnel",
        Duration::from_secs(30),
        || echo(addr, b"before", Duration::from_secs(2)).ok(),
    )
    .expect("echo");
    addr
}

fn a_crashed_peer_gateway_heals_within_seconds(transport: Transport, pool: u8) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (d1, org1, d2, org2) = federation(tmp.path(), "127.0.0.1", transport, pool);
    // the restarted process must come back where org1 dials it (the port the OS chose)
    let bound: SocketAddr = org2.endpoint().parse().expect("gateway address");
    edit(&d2, |c| c.listen = bound);
    let addr = echo_node(&d1, &d2);

    sigkill(org2);
    // a connection opened while org2 is down: held at org1, not refused
    let killed = Instant::now();
    let mut held = TcpStream::connect(addr).expect("org1 accepts while org2 is down");
    held.write_all(b"held during the outage").expect("write");
    // the outage: org2's supervisor restarts it after two seconds
    std::thread::sleep(Duration::from_secs(2).saturating_sub(killed.elapsed()));
    let org2 = fedgw().start(&d2).expect("org2 restarts");
    let ready = Instant::now();
    let mut attempts = 0;
    wait_for(
        "the first echo after the restart",
        Duration::from_secs(30),
        || {
            attempts += 1;
            echo(addr, b"after", Duration::from_secs(10)).ok()
        },
    )
    .expect("echo after the restart");
    let took = ready.elapsed();
    assert!(
        took < RECOVERY_BOUND,
        "{transport:?}: first echo {took:?} after org2 was ready ({attempts} attempts)\norg1: {}\norg2: {}",
        org1.log_text(),
        org2.log_text()
    );
    assert_eq!(
        attempts,
        1,
        "{transport:?}: a connection was refused\norg1: {}\norg2: {}",
        org1.log_text(),
        org2.log_text()
    );

    held.set_read_timeout(Some(Duration::from_millis(HOLD_MS) * 2))
        .expect("timeout");
    read_back(&mut held, b"held during the outage")
        .unwrap_or_else(|e| panic!("{transport:?}: the held connection was answered: {e}"));

    assert!(org2.stop().expect("stop").success());
    assert!(org1.stop().expect("stop").success());
}

#[test]
fn a_crashed_peer_gateway_heals_within_seconds_over_quic() {
    a_crashed_peer_gateway_heals_within_seconds(Transport::Quic, 81);
}

#[test]
fn a_crashed_peer_gateway_heals_within_seconds_over_tcp() {
    a_crashed_peer_gateway_heals_within_seconds(Transport::Tcp, 82);
}

fn gateways_advertised_by_host_name_sync_tunnel_and_ping(transport: Transport, pool: u8) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (d1, org1, d2, org2) = federation(tmp.path(), "localhost", transport, pool);
    // org2's node reaches org1 by sync, and an echo goes through the tunnel
    let addr = echo_node(&d1, &d2);
    echo(addr, b"by host name", Duration::from_secs(10)).expect("echo");
    let status = fedgw()
        .run(["status", "--json", "--data-dir", &s(&d1)])
        .expect("spawn")
        .ok()
        .expect("status");
    let want = match transport {
        Transport::Tcp => "\"tcp\"",
        _ => "\"quic\"",
    };
    assert!(
        status.stdout.contains(want),
        "{transport:?}: {}",
        status.stdout
    );
    // org1 pings org2 at the name org2 advertises
    let port = org2.endpoint().rsplit_once(':').map(|(_, p)| p.to_owned());
    let at = format!("localhost:{}", port.expect("port"));
    let ping = fedgw()
        .run(["ping", &at, "--data-dir", &s(&d1)])
        .expect("spawn");
    assert_eq!(ping.code, Some(0), "{}{}", ping.stdout, ping.stderr);
    assert!(
        ping.stdout.contains("is org2 (gw-dc1.org2.acme.test)"),
        "{}",
        ping.stdout
    );
    assert!(org2.stop().expect("stop").success());
    assert!(org1.stop().expect("stop").success());
}

#[test]
fn gateways_advertised_by_host_name_sync_tunnel_and_ping_over_quic() {
    gateways_advertised_by_host_name_sync_tunnel_and_ping(Transport::Quic, 83);
}

#[test]
fn gateways_advertised_by_host_name_sync_tunnel_and_ping_over_tcp() {
    gateways_advertised_by_host_name_sync_tunnel_and_ping(Transport::Tcp, 84);
}

#[test]
fn a_gateway_presenting_another_members_certificate_at_the_expected_address_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (d1, org1, d2, org2) = federation(tmp.path(), "127.0.0.1", Transport::Tcp, 85);
    let d3 = tmp.path().join("org3");
    let token = fedgw()
        .run(["invite", "org3", "--data-dir", &s(&d1)])
        .expect("spawn")
        .ok()
        .expect("invite");
    let mut args = vec![
        "join".to_owned(),
        token.stdout.trim().to_owned(),
        "--org".into(),
        "org3".into(),
        "--data-dir".into(),
        s(&d3),
    ];
    args.extend(NET.map(String::from));
    fedgw().run(&args).expect("spawn").ok().expect("join");
    edit(&d3, |c| c.tunnel.transport = Transport::Tcp);
    let org3 = fedgw().start(&d3).expect("org3");
    // a node at org2, reached through the tunnel while org2 is where it says
    let addr = echo_node(&d1, &d2);

    // org2 now advertises org3's address: whoever dials org2 there meets org3's valid leaf
    assert!(org2.stop().expect("stop").success());
    let org3_at = org3.endpoint();
    edit(&d2, |c| c.advertise = vec![org3_at.clone()]);
    // org1 refuses a connection it has no tunnel for at once
    assert!(org1.stop().expect("stop").success());
    edit(&d1, |c| c.tunnel.connect_hold_ms = 0);
    let org1 = fedgw().start(&d1).expect("org1 restarts");
    let org2 = fedgw().start(&d2).expect("org2 restarts");
    let members = || {
        fedgw()
            .run(["members", "--json", "--data-dir", &s(&d1)])
            .ok()
            .map(|r| r.stdout)
    };
    wait_for(
        "org1 learns org2's new address",
        Duration::from_secs(30),
        || members().filter(|m| m.contains(&org3_at)),
    )
    .expect("new address");
    // org1 dials org2 where it advertises itself: org3 answers with its own valid leaf, which
    // does not name gw-dc1.org2.acme.test, so no tunnel comes up and the connection is reset
    let refused = echo(addr, b"to org2", Duration::from_secs(20));
    assert!(refused.is_err(), "{refused:?}");
    let status = fedgw()
        .run(["status", "--json", "--data-dir", &s(&d1)])
        .expect("spawn")
        .ok()
        .expect("status");
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    let links = v["links"].as_array().cloned().unwrap_or_default();
    assert!(
        !links.iter().any(|l| l.to_string().contains("org2")),
        "no link to org2 at org3's address: {links:?}"
    );
    for gw in [org3, org2, org1] {
        assert!(gw.stop().expect("stop").success());
    }
}

#[test]
fn a_new_link_from_a_restarted_gateway_supersedes_its_stale_one_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (d1, org1, d2, org2) = federation(tmp.path(), "127.0.0.1", Transport::Quic, 86);
    // a link up between them: org1 (the lower org/site) keeps it
    echo_node(&d1, &d2);
    // and a connection from org2 to a node at org1 on it
    let node = echo_server();
    fedgw()
        .run([
            "node",
            "add",
            "node2",
            "--data-dir",
            &s(&d1),
            "--enode",
            &format!(
                "enode://{}@127.0.0.1:{}?discport=0",
                fedgw_tests::enode_id(0x6b),
                node.port()
            ),
        ])
        .expect("spawn")
        .ok()
        .expect("node add");
    let at2 = wait_for("org2's address for node2", Duration::from_secs(30), || {
        local_address_of(&d2, "node2")
    })
    .expect("listed");
    let mut live = wait_for("a connection to node2", Duration::from_secs(30), || {
        let mut c = TcpStream::connect(at2).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        c.write_all(b"live").ok()?;
        read_back(&mut c, b"live").ok().map(|()| c)
    })
    .expect("live connection");
    // org1 crashes and comes back on another port (another host, say): nothing of org2's
    // stale link reaches the new process, so no stateless reset ends it; org1 dials org2 at
    // start, and that link must replace the stale one at org2 at once
    sigkill(org1);
    let org1 = fedgw().start(&d1).expect("org1 restarts");
    wait_for(
        "org2 closes the stale link",
        Duration::from_secs(10),
        || org2.log_text().contains("tunnel superseded").then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\norg2: {}", org2.log_text()));
    // its streams end with it, rather than at the stale link's idle timeout (20 s)
    live.set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let mut one = [0u8; 1];
    let ended = live.read(&mut one);
    assert!(
        matches!(&ended, Ok(0))
            || ended
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut),
        "the connection on the stale link ends: {ended:?}"
    );
    assert!(org2.stop().expect("stop").success());
    assert!(org1.stop().expect("stop").success());
}
