//! Records that must be refused at ingress and never forwarded, sent by a peer holding a real
//! member certificate (org2's CA issued it a gateway leaf for a rogue site).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::support::*;
use fedgw_certs::{CertificateAuthority, PeerVerifier, pki, tls};
use fedgw_gateway::datadir::DataDir;
use fedgw_gateway::membership::record::seal;
use fedgw_proto::v1 as pb;
use pb::sync_message::Msg;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

fn org_ca(dir: &DataDir) -> CertificateAuthority {
    let cert =
        pki::certs_from_pem(&std::fs::read_to_string(dir.org_cert()).expect("cert")).expect("pem");
    CertificateAuthority::from_parts(
        cert[0].clone(),
        &std::fs::read_to_string(dir.org_key()).expect("key"),
    )
    .expect("ca")
}

fn node(enode: u8) -> pb::record_body::Body {
    pb::record_body::Body::Node(pb::NodeRecord {
        client: pb::ClientKind::Goquorum.into(),
        enode_id: fedgw_tests::enode_key(u64::from(enode)),
        p2p_port: 30303,
        site: "dc1".into(),
        ..Default::default()
    })
}

struct Rogue {
    tx: mpsc::Sender<pb::SyncMessage>,
    rx: tonic::Streaming<pb::SyncMessage>,
}

impl Rogue {
    /// Opens a sync stream to `endpoint` as gateway `org2/rogue`.
    async fn connect(org2: &DataDir, root: &[u8], endpoint: &str) -> Self {
        let ca = org_ca(org2);
        let leaf = ca
            .issue_gateway_leaf(
                "rogue",
                "org2",
                DOMAIN,
                Duration::from_secs(600),
                SystemTime::now(),
            )
            .expect("leaf");
        let provider = tls::provider();
        let identity = tls::ReloadableIdentity::new(leaf.chain, &leaf.key, &provider).expect("id");
        let verifier =
            PeerVerifier::new(root.to_vec().into(), DOMAIN, Default::default(), &provider)
                .expect("v");
        let cfg = Arc::new(
            tls::federation_client_config(&identity, Arc::new(verifier), provider).expect("cfg"),
        );
        let stream = fedgw_gateway::net::dial_tls(endpoint, cfg, WAIT)
            .await
            .expect("dial");
        let channel = fedgw_gateway::net::single_use_channel(stream)
            .await
            .expect("channel");
        let (tx, rx) = mpsc::channel(16);
        let rx = pb::federation_client::FederationClient::new(channel)
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20)
            .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("sync")
            .into_inner();
        tx.send(pb::SyncMessage {
            msg: Some(Msg::Open(pb::SyncOpen {
                version: 1,
                site: "rogue".into(),
                outbound_only: false,
            })),
        })
        .await
        .expect("open");
        Self { tx, rx }
    }

    /// Sends records and returns the ack.
    async fn send(&mut self, envelopes: Vec<Vec<u8>>) -> pb::SyncAck {
        self.tx
            .send(pb::SyncMessage {
                msg: Some(Msg::Records(pb::SyncRecords { envelopes })),
            })
            .await
            .expect("send");
        loop {
            let m = tokio::time::timeout(WAIT, self.rx.next())
                .await
                .expect("answer in time");
            match m {
                Some(Ok(pb::SyncMessage {
                    msg: Some(Msg::Ack(a)),
                })) => return a,
                Some(Ok(_)) => continue,
                other => panic!("stream ended: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_refused_counted_and_never_forwarded() {
    let mut fed = Fed::with_orgs(3).await;
    let root =
        pki::certs_from_pem(&std::fs::read_to_string(fed.gws[0].dir.root_cert()).expect("root"))
            .expect("pem")[0]
            .to_vec();
    let org1 = org_ca(&fed.gws[0].dir).envelope_signer().expect("signer");
    let org2 = org_ca(&fed.gws[1].dir).envelope_signer().expect("signer");

    // real state to collide with: org1 owns enode 0x11; org2's node "held" is at some seq
    fed.gws[0]
        .admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec("owner", 0x11, "10.1.0.1")),
        })
        .await
        .expect("add");
    fed.gws[1]
        .admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec("held", 0x22, "10.2.0.1")),
        })
        .await
        .expect("add");
    fed.converged().await;
    let held_seq = fed.gws[0].run().membership.read(|v| {
        v.nodes()
            .into_iter()
            .find(|n| n.name == "held")
            .map(|n| n.seq)
            .expect("held")
    });
    let digest_before = fed.gws[0].digest();

    let mut forged = pb::Envelope::decode(
        seal(&org2, "org2", "x", 1, node(1))
            .expect("seal")
            .as_slice(),
    )
    .expect("env");
    forged.signature[10] ^= 0xff;
    let mut big = pb::NodeRecord {
        client: 1,
        site: "dc1".into(),
        ..Default::default()
    };
    big.roles = (0..3000).map(|i| format!("role-{i}")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("forged signature", forged.encode_to_vec()),
        (
            "org1 about org2",
            seal(&org1, "org2", "y", 1, node(2)).expect("seal"),
        ),
        (
            "older seq",
            seal(&org2, "org2", "held", held_seq - 1, node(0x22)).expect("seal"),
        ),
        (
            "equivocation",
            seal(&org2, "org2", "held", held_seq, node(0x23)).expect("seal"),
        ),
        (
            "enode of another org",
            seal(&org2, "org2", "thief", 1, node(0x11)).expect("seal"),
        ),
        (
            "oversized record",
            seal(&org2, "org2", "big", 1, pb::record_body::Body::Node(big)).expect("seal"),
        ),
        ("garbage", b"not an envelope".to_vec()),
    ];
    let mut rogue =
        Rogue::connect(&fed.gws[1].dir, &root, &fed.gws[0].run().info.advertise[0]).await;
    for (what, bytes) in &cases {
        let ack = rogue.send(vec![bytes.clone()]).await;
        assert_eq!((ack.accepted, ack.rejected), (0, 1), "{what}");
    }
    // a demo key: the first public 7nodes enode id
    let demo: Vec<u8> = (0..64)
        .map(|i| u8::from_str_radix(&"ac6b1096ca56b9f6d004b779ae3728bf83f8e22453404cc3cef16a3d9b96608bc67c4b30db88e0a5a6c6390213f7acbe1153ff6d23ce57380104288ae19373ef"[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let demo_rec = pb::record_body::Body::Node(pb::NodeRecord {
        enode_id: demo,
        client: 1,
        site: "dc1".into(),
        ..Default::default()
    });
    let ack = rogue
        .send(vec![
            seal(&org2, "org2", "demo", 1, demo_rec).expect("seal"),
        ])
        .await;
    assert_eq!((ack.accepted, ack.rejected), (0, 1), "demo key");

    let m1 = &fed.gws[0].run().membership;
    // every case and the demo key, but the older seq: a stale copy is counted by the metric only
    assert_eq!(m1.rejected_total(), cases.len() as u64);
    assert_eq!(m1.equivocations_total(), 1);
    assert_eq!(fed.gws[0].digest(), digest_before, "nothing stored");
    // a valid record over the same stream is accepted and forwarded: the link works
    let ack = rogue
        .send(vec![
            seal(&org2, "org2", "fine", 1, node(0x33)).expect("seal"),
        ])
        .await;
    assert_eq!((ack.accepted, ack.rejected), (1, 0));
    fed.converged().await;
    assert!(fed.gws[2].node_names().contains(&"org2/fine".to_owned()));
    for g in &fed.gws[1..] {
        assert_eq!(
            g.run().membership.rejected_total(),
            0,
            "{} saw a forwarded bad record",
            g.org
        );
    }

    // a message over the size limit breaks the stream and stores nothing
    let huge: Vec<Vec<u8>> = (0..80).map(|_| vec![0u8; 16 * 1024]).collect();
    let _ = rogue
        .tx
        .send(pb::SyncMessage {
            msg: Some(Msg::Records(pb::SyncRecords { envelopes: huge })),
        })
        .await;
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match rogue.rx.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("stream ends");
    assert!(matches!(end, Some(Err(_)) | None), "{end:?}");

    // after a restart the replay is still older than what is held
    fed.gws[0].stop().await;
    fed.gws[0].start().await;
    let mut rogue =
        Rogue::connect(&fed.gws[1].dir, &root, &fed.gws[0].run().info.advertise[0]).await;
    let ack = rogue.send(vec![cases[2].1.clone()]).await;
    assert_eq!((ack.accepted, ack.rejected), (0, 1), "replay after restart");
    fed.stop_all().await;
}
