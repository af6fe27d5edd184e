use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedgw_tests::rpcfake::{Cue, RaftRpcFake};

use super::*;

fn client(fake: &RaftRpcFake) -> RpcClient {
    RpcClient::new(fake.url().parse().expect("fake URL parses"))
        .with_timeout(Duration::from_secs(2))
}

#[test]
fn url_accepts_host_port_and_path() {
    let u: RpcUrl = "http://10.0.0.9:8545".parse().expect("ok");
    assert_eq!((u.host(), u.port()), ("10.0.0.9", 8545));
    assert_eq!(u.to_string(), "http://10.0.0.9:8545/");
    let u: RpcUrl = "http://Node-1.example:8545/rpc".parse().expect("ok");
    assert_eq!(u.to_string(), "http://node-1.example:8545/rpc");
    let u: RpcUrl = "http://[fd00::9]:8545".parse().expect("ok");
    assert_eq!(u.host(), "fd00::9");
    assert_eq!(u.to_string(), "http://[fd00::9]:8545/");
}

#[test]
fn url_refuses_what_it_cannot_call() {
    let long = format!("http://a:1/{}", "x".repeat(MAX_URL_LEN));
    for (url, want) in [
        ("https://10.0.0.9:8545", UrlError::Scheme),
        ("ws://10.0.0.9:8546", UrlError::Scheme),
        ("10.0.0.9:8545", UrlError::Scheme),
        ("http://10.0.0.9", UrlError::Port),
        ("http://10.0.0.9:0", UrlError::Port),
        ("http://10.0.0.9:99999", UrlError::Port),
        ("http://:8545", UrlError::Host),
        ("http://a_b:8545", UrlError::Host),
        ("http://user@host:8545", UrlError::Host),
        ("http://[zz]:8545", UrlError::Host),
        ("http://h:8545/a b", UrlError::Path),
        ("http://h:8545/?x=1", UrlError::Path),
        (long.as_str(), UrlError::TooLong),
    ] {
        assert_eq!(url.parse::<RpcUrl>(), Err(want), "{url}");
    }
}

#[test]
fn quantities() {
    assert_eq!(parse_quantity("0x0"), Some(0));
    assert_eq!(parse_quantity("0x1b4"), Some(436));
    assert_eq!(parse_quantity("0x"), None);
    assert_eq!(parse_quantity("12"), None);
    assert_eq!(parse_quantity("0x11111111111111111"), None);
}

#[tokio::test]
async fn raft_methods_round_trip() {
    let fake = RaftRpcFake::start().expect("ok");
    let first = fedgw_tests::enode_id(1);
    fake.add_member(&first, "n1.org1.fedgw", 50400);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let c = client(&fake).with_hook(Arc::new(move |m, r| {
        seen.lock().expect("ok").push((m, r));
    }));
    let cluster = c.raft_cluster().await.expect("ok");
    assert_eq!(cluster.len(), 1);
    assert_eq!(
        (cluster[0].raft_id, cluster[0].node_id.as_str()),
        (1, first.as_str())
    );
    let second = fedgw_tests::enode_id(2);
    let enode = format!("enode://{second}@n2.org2.fedgw:30303?discport=0&raftport=50400");
    assert_eq!(c.raft_add_peer(&enode).await.expect("ok"), 2);
    let err = c.raft_add_peer(&enode).await.expect_err("fails");
    assert!(
        matches!(
            err,
            RpcError::Remote {
                method: "raft_addPeer",
                ..
            }
        ),
        "{err}"
    );
    c.raft_remove_peer(2).await.expect("ok");
    assert_eq!(c.block_number().await.expect("ok"), 7);
    assert_eq!(c.raft_role().await.expect("ok"), "minter");
    assert_eq!(fake.calls("raft_addPeer").len(), 2);
    assert_eq!(
        *calls.lock().expect("ok"),
        [
            ("raft_cluster", "ok"),
            ("raft_addPeer", "ok"),
            ("raft_addPeer", "remote"),
            ("raft_removePeer", "ok"),
            ("eth_blockNumber", "ok"),
            ("raft_role", "ok"),
        ]
    );
}

#[tokio::test]
async fn garbage_huge_silent_and_closed_are_bounded_and_typed() {
    let fake = RaftRpcFake::start().expect("ok");
    let c = client(&fake).with_max_body(64 * 1024);
    fake.cue("raft_cluster", Cue::Garbage);
    assert!(matches!(c.raft_cluster().await, Err(RpcError::Garbage)));
    fake.cue("raft_cluster", Cue::Huge(10 << 20));
    assert!(matches!(
        c.raft_cluster().await,
        Err(RpcError::TooLarge(65536))
    ));
    fake.cue("raft_cluster", Cue::Close);
    assert!(matches!(c.raft_cluster().await, Err(RpcError::Http(_))));
    fake.cue("raft_addPeer", Cue::Error("no leader".into()));
    let e = c.raft_add_peer("enode://x").await.expect_err("fails");
    assert_eq!(
        e.to_string(),
        "node refused raft_addPeer: no leader (code -32000)"
    );
    // a result of the wrong shape
    fake.cue("raft_role", Cue::Error("x".into()));
    assert!(c.raft_role().await.is_err());
    assert!(matches!(
        c.call::<u16>("raft_role", Value::Array(vec![])).await,
        Err(RpcError::Result {
            method: "raft_role",
            ..
        })
    ));
    fake.cue("raft_cluster", Cue::Hang);
    let c = c.with_timeout(Duration::from_millis(300));
    let t = std::time::Instant::now();
    assert!(matches!(c.raft_cluster().await, Err(RpcError::Timeout(_))));
    assert!(t.elapsed() < Duration::from_secs(5));
    // the endpoint still answers afterwards
    assert_eq!(c.raft_cluster().await.expect("ok"), vec![]);
}

#[tokio::test]
async fn refused_connection_is_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("ok");
        l.local_addr().expect("ok").port()
    };
    let c = RpcClient::new(format!("http://127.0.0.1:{port}").parse().expect("ok"));
    assert!(matches!(c.raft_cluster().await, Err(RpcError::Connect(_))));
}

#[tokio::test]
async fn peering_methods_round_trip() {
    let fake = RaftRpcFake::start().expect("ok");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let c = client(&fake).with_hook(Arc::new(move |m, r| {
        seen.lock().expect("ok").push((m, r));
    }));
    let id = fedgw_tests::enode_id(3);
    let enode = format!("enode://{id}@m1.org2.fedgw:30303?discport=0");
    assert!(c.admin_add_peer(&enode).await.expect("ok"));
    let peers = c.admin_peers().await.expect("ok");
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].enode_id(), Some(id.clone()));
    assert!(c.admin_remove_peer(&enode).await.expect("ok"));
    assert!(c.admin_peers().await.expect("ok").is_empty());

    let list = [enode.clone()];
    c.perm_add_nodes_to_allowlist(&list).await.expect("ok");
    assert_eq!(c.perm_get_nodes_allowlist().await.expect("ok"), list);
    let err = c
        .perm_add_nodes_to_allowlist(&list)
        .await
        .expect_err("Besu refuses an entry it has");
    assert!(matches!(err, RpcError::Remote { .. }), "{err}");
    c.perm_remove_nodes_from_allowlist(&list).await.expect("ok");
    assert!(fake.allowlist().is_empty());

    // Tessera's ADMIN API: a PUT under the endpoint's path; 201 and 200 are both success
    let tessera = RpcClient::new(format!("{}/", fake.url()).parse().expect("url"));
    tessera
        .tessera_add_peer("http://m1.org2.fedgw:9000")
        .await
        .expect("new");
    tessera
        .tessera_add_peer("http://m1.org2.fedgw:9000")
        .await
        .expect("known");
    assert_eq!(fake.tessera_peers(), ["http://m1.org2.fedgw:9000"]);
    assert_eq!(
        fake.calls("tessera_addPeer")[0].params,
        serde_json::json!({"url": "http://m1.org2.fedgw:9000"})
    );
    fake.cue("tessera_addPeer", Cue::Error("boom".into()));
    let err = tessera
        .tessera_add_peer("http://x:1")
        .await
        .expect_err("500");
    assert!(matches!(err, RpcError::Status(500)), "{err}");
    assert_eq!(
        calls.lock().expect("ok")[..4],
        [
            ("admin_addPeer", "ok"),
            ("admin_peers", "ok"),
            ("admin_removePeer", "ok"),
            ("admin_peers", "ok"),
        ]
    );
}

#[test]
fn peer_enode_ids_come_from_the_url() {
    let id = fedgw_tests::enode_id(4);
    let p = |enode: String| PeerInfo { enode };
    assert_eq!(
        p(format!("enode://{id}@1.2.3.4:30303")).enode_id(),
        Some(id.clone())
    );
    assert_eq!(
        p(format!("enode://{}@h:1", id.to_ascii_uppercase())).enode_id(),
        Some(id)
    );
    assert_eq!(p("enode://abcd@h:1".into()).enode_id(), None);
    assert_eq!(p(String::new()).enode_id(), None);
}
