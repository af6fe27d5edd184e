use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use fedgw_proto::v1 as pb;
use hickory_proto::rr::RecordType;
use tokio_util::sync::CancellationToken;

use crate::app::{Running, start};
use crate::datadir::DataDir;
use crate::provision;

/// Asks the gateway's DNS over UDP; returns the answers' data as text.
async fn ask(dns: SocketAddr, name: &str, qtype: hickory_proto::rr::RecordType) -> Vec<String> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    let mut q = Message::new(7, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(name.parse().expect("name"), qtype));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    sock.send_to(&q.to_vec().expect("encode"), dns)
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
        .await
        .expect("an answer in time")
        .expect("recv");
    Message::from_vec(&buf[..n])
        .expect("decode")
        .answers
        .iter()
        .map(|r| r.data.to_string())
        .collect()
}

/// A one-org gateway on loopback, started, and an admin client.
async fn gateway(
    tmp: &std::path::Path,
) -> (
    Running,
    CancellationToken,
    pb::admin_client::AdminClient<tonic::transport::Channel>,
) {
    let dir = DataDir::new(tmp.join("org1"));
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    provision::init(
        &dir,
        &provision::InitOptions {
            consortium: "acme".into(),
            domain: "acme.test".into(),
            org: "org1".into(),
            admission: crate::config::Admission::Operator,
            genesis: None,
            consensus: Default::default(),
            network: provision::NetworkOptions {
                fabric_msp_id: None,
                site: "dc1".into(),
                advertise: vec!["127.0.0.1:0".into()],
                listen: Some(any),
                dns: any,
                metrics: any,
                leaf_lifetime: Duration::from_secs(3600),
                outbound_only: false,
                addresses: Default::default(),
                tunnel: Default::default(),
            },
        },
        SystemTime::now(),
    )
    .expect("init");
    let shutdown = CancellationToken::new();
    let running = start(dir.clone(), shutdown.clone()).await.expect("start");
    let admin = crate::admin::connect(&dir.admin_socket())
        .await
        .expect("admin");
    (running, shutdown, admin)
}

fn tessera(name: &str, host: &str) -> pb::AddNodeRequest {
    pb::AddNodeRequest {
        node: Some(pb::NodeSpec {
            name: name.into(),
            client: pb::ClientKind::Tessera.into(),
            host: host.into(),
            tessera_url: format!("http://{host}:9000"),
            tessera_keys: vec![vec![name.len() as u8; 32]],
            ..Default::default()
        }),
    }
}

/// Registers Tessera node `name` at `host` through the admin API.
async fn add(
    admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    name: &str,
    host: &str,
) {
    admin.add_node(tessera(name, host)).await.expect("add");
}

/// Stops the gateway and waits (at most 10 s) for it to finish.
async fn stop(running: Running, shutdown: CancellationToken) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("stops");
}

/// Polls `name`'s A records at `dns` until they are `want`, for up to 20 s.
async fn until_answered(dns: SocketAddr, name: &str, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while ask(dns, name, RecordType::A).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} answers {want:?} in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The running keeper, end to end: with the store's reads failing, a view change (a new
/// node) is still projected (the SOA serial moves) from the last good site state, so the
/// node served before keeps its DNS answer instead of losing it; once reads work again the
/// new node gets its address too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_zone_survives_a_failed_store_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (running, shutdown, mut admin) = gateway(tmp.path()).await;
    let dns = running.info.dns;
    let serial = || async {
        ask(dns, "acme.test.", RecordType::SOA)
            .await
            .first()
            .and_then(|soa| soa.split_whitespace().nth(2)?.parse::<u32>().ok())
            .expect("SOA serial")
    };
    add(&mut admin, "tm1", "10.0.0.1").await;
    until_answered(dns, "tm1.org1.acme.test.", &["10.0.0.1"]).await;
    let before = serial().await;

    running.store.fail_reads(true);
    add(&mut admin, "tm22", "10.0.0.2").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while serial().await == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change is projected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        ask(dns, "tm1.org1.acme.test.", RecordType::A).await,
        ["10.0.0.1"],
        "a failed read kept the node's answer"
    );
    // a Service address change asks for a full re-read, which fails too: nothing is lost
    running.membership.touch();
    assert_eq!(
        ask(dns, "tm1.org1.acme.test.", RecordType::A).await,
        ["10.0.0.1"]
    );

    running.store.fail_reads(false);
    until_answered(dns, "tm22.org1.acme.test.", &["10.0.0.2"]).await;
    assert_eq!(
        ask(dns, "tm1.org1.acme.test.", RecordType::A).await,
        ["10.0.0.1"]
    );
    stop(running, shutdown).await;
}

/// Removing a node takes its name out of the zone, and only its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_leaves_the_zone_and_the_others_stay() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (running, shutdown, mut admin) = gateway(tmp.path()).await;
    let dns = running.info.dns;
    add(&mut admin, "tm1", "10.0.0.1").await;
    add(&mut admin, "tm22", "10.0.0.2").await;
    until_answered(dns, "tm22.org1.acme.test.", &["10.0.0.2"]).await;
    admin
        .remove_node(pb::RemoveNodeRequest {
            name: "tm22".into(),
        })
        .await
        .expect("remove");
    until_answered(dns, "tm22.org1.acme.test.", &[]).await;
    assert_eq!(
        ask(dns, "tm1.org1.acme.test.", RecordType::A).await,
        ["10.0.0.1"]
    );
    stop(running, shutdown).await;
}
