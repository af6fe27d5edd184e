//! Sync sessions in memory: two memberships joined by a pair of channels in place of the gRPC
//! stream, on paused time (heartbeats, silence and session age run on tokio's clock).

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::*;
use crate::membership::test_pki::{Pki, membership};

#[test]
fn batches_respect_count_and_size() {
    let small = (0..600).map(|_| vec![0u8; 10]);
    let b = batches(small);
    assert_eq!(b.len(), 3);
    let big = (0..5).map(|_| vec![0u8; 200 * 1024]);
    assert_eq!(batches(big).len(), 3);
    assert!(batches(std::iter::empty()).is_empty());
}

fn id(org: &str) -> GatewayId {
    GatewayId::new(org, "dc1")
}

/// Runs a session between `a` (the dialler) and `b` over in-memory channels; the handles
/// return how each end's session ended.
fn pair(a: &Membership, b: &Membership) -> (JoinHandle<SessionEnd>, JoinHandle<SessionEnd>) {
    let (a_tx, a_out) = mpsc::channel(QUEUE);
    let (b_tx, b_out) = mpsc::channel(QUEUE);
    let from_a = ReceiverStream::new(a_out).map(Ok::<_, tonic::Status>);
    let from_b = ReceiverStream::new(b_out).map(Ok::<_, tonic::Status>);
    let a_end = tokio::spawn(run(
        a.clone(),
        b.me().clone(),
        true,
        from_b,
        a_tx,
        CancellationToken::new(),
    ));
    let b_end = tokio::spawn(run(
        b.clone(),
        a.me().clone(),
        false,
        from_a,
        b_tx,
        CancellationToken::new(),
    ));
    (a_end, b_end)
}

/// Waits (paused time: at most a simulated minute) until `a` and `b` hold the same view.
async fn converge(a: &Membership, b: &Membership) {
    let (mut a_changed, mut b_changed) = (a.subscribe(), b.subscribe());
    tokio::time::timeout(Duration::from_secs(60), async {
        while a.read(|v| v.digest()) != b.read(|v| v.digest()) {
            tokio::select! {
                r = a_changed.changed() => r.expect("membership lives"),
                r = b_changed.changed() => r.expect("membership lives"),
            }
        }
    })
    .await
    .expect("views converge");
}

/// How `session` ended, within `within` (paused time).
async fn ended(session: JoinHandle<SessionEnd>, within: Duration) -> SessionEnd {
    tokio::time::timeout(within, session)
        .await
        .expect("the session ends")
        .expect("session task")
}

/// Asserts `end` is how the answering side ends when the dialler closes: it reads the
/// dialler's Terminate, or finds its queue to the dialler gone first.
fn closed_by_peer(end: &SessionEnd) {
    assert!(
        matches!(end, SessionEnd::Terminated(_) | SessionEnd::Transport(_)),
        "{end}"
    );
}

/// Ingests `envelopes` at `m`, every one of them accepted.
async fn ingest(m: &Membership, envelopes: Vec<Vec<u8>>) {
    let n = envelopes.len();
    let report = m.ingest(envelopes, None).await.expect("ingest");
    assert_eq!(report.accepted as usize, n, "{:?}", report.rejected);
}

/// The names of the nodes `m` holds.
fn nodes(m: &Membership) -> Vec<String> {
    let mut names: Vec<String> = m.read(|v| v.nodes().into_iter().map(|n| n.name).collect());
    names.sort();
    names
}

#[tokio::test(start_paused = true)]
async fn a_session_pair_brings_the_views_together_both_ways() {
    let pki = Pki::new(&["org1", "org2"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let a = membership(&pki, "org1", dir.path(), |_| {});
    let b = membership(&pki, "org2", dir.path(), |_| {});
    let members = vec![pki.member("org1", 1), pki.member("org2", 1)];
    ingest(&a, members.clone()).await;
    ingest(&a, vec![pki.node("org1", "org1", "node1", 1, 7)]).await;
    ingest(&b, members).await;
    ingest(&b, vec![pki.node("org2", "org2", "node2", 1, 8)]).await;
    assert_eq!(nodes(&a), ["node1"]);
    assert_eq!(nodes(&b), ["node2"]);

    let (a_end, b_end) = pair(&a, &b);
    converge(&a, &b).await;
    assert_eq!(nodes(&a), ["node1", "node2"]);
    assert!(a.is_connected("org2/dc1") && b.is_connected("org1/dc1"));

    // a live push: a record ingested at b reaches a over the open session
    ingest(&b, vec![pki.node("org2", "org2", "node3", 1, 9)]).await;
    converge(&a, &b).await;
    assert_eq!(nodes(&a), ["node1", "node2", "node3"]);

    // heartbeats keep the idle session up well past three intervals
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!a_end.is_finished() && !b_end.is_finished());

    a.close_all();
    let a_end = ended(a_end, Duration::from_secs(10)).await;
    assert!(matches!(a_end, SessionEnd::Closed), "{a_end}");
    let b_end = ended(b_end, Duration::from_secs(10)).await;
    closed_by_peer(&b_end);
    assert!(!b.is_connected("org1/dc1"));
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_dropped_after_three_heartbeats() {
    let pki = Pki::new(&["org1", "org2"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let a = membership(&pki, "org1", dir.path(), |_| {});
    // the peer opens the session, then says nothing more
    let (peer_tx, peer_out) = mpsc::channel(QUEUE);
    let open = msg(Msg::Open(pb::SyncOpen {
        version: SYNC_PROTOCOL_VERSION,
        site: "dc1".into(),
        outbound_only: false,
    }));
    peer_tx.send(open).await.expect("queue");
    let (a_tx, mut a_out) = mpsc::channel(QUEUE);
    let started = Instant::now();
    let session = tokio::spawn(run(
        a.clone(),
        id("org2"),
        true,
        ReceiverStream::new(peer_out).map(Ok::<_, tonic::Status>),
        a_tx,
        CancellationToken::new(),
    ));
    let end = ended(session, Duration::from_secs(60)).await;
    let lasted = started.elapsed();
    assert!(matches!(end, SessionEnd::Silent(_)), "{end}");
    // silence is checked at each heartbeat (1 s): dropped at the first tick past 3 s
    assert!(
        lasted > Duration::from_secs(3) && lasted <= Duration::from_secs(5),
        "dropped after {lasted:?}"
    );
    let mut heartbeats = 0;
    while let Ok(m) = a_out.try_recv() {
        heartbeats += usize::from(matches!(m.msg, Some(Msg::Heartbeat(_))));
    }
    assert!(heartbeats >= 3, "{heartbeats} heartbeats sent");
    drop(peer_tx);
}

#[tokio::test(start_paused = true)]
async fn a_session_ends_at_its_maximum_age() {
    let pki = Pki::new(&["org1", "org2"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let a = membership(&pki, "org1", dir.path(), |c| {
        c.max_session_age = Duration::from_secs(90);
    });
    let b = membership(&pki, "org2", dir.path(), |_| {});
    let started = Instant::now();
    let (a_end, b_end) = pair(&a, &b);
    let a_end = ended(a_end, Duration::from_secs(600)).await;
    assert!(matches!(a_end, SessionEnd::MaxAge), "{a_end}");
    assert_eq!(started.elapsed().as_secs(), 90);
    let b_end = ended(b_end, Duration::from_secs(10)).await;
    closed_by_peer(&b_end);
}

/// Waits (paused time: at most a simulated minute) until `cond` holds, re-checking at each
/// change of `m`'s view or local state, and every 100 ms (sessions coming up notify nothing).
async fn until(m: &Membership, what: &str, cond: impl Fn() -> bool) {
    let mut changed = m.subscribe();
    tokio::time::timeout(Duration::from_secs(60), async {
        while !cond() {
            tokio::select! {
                r = changed.changed() => r.expect("membership lives"),
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

fn local_node(name: &str, host: &str) -> crate::store::LocalNode {
    crate::store::LocalNode {
        name: name.into(),
        host: host.into(),
        replicas: vec![],
        tessera_url: None,
        rpc_url: Some(format!("http://{host}:8545")),
    }
}

/// Two replicas of org1/dc1 (`""`, the first, and `"b"`), each with its own store.
fn replicas(pki: &Pki) -> (Membership, Membership, [tempfile::TempDir; 2]) {
    let dirs = [0, 1].map(|_| tempfile::tempdir().expect("tempdir"));
    let a = membership(pki, "org1", dirs[0].path(), |_| {});
    let b = membership(pki, "org1", dirs[1].path(), |c| c.me.replica = "b".into());
    a.store().set_replica("");
    b.store().set_replica("b");
    (a, b, dirs)
}

#[tokio::test(start_paused = true)]
async fn siblings_share_registrations_and_allocations_and_the_lower_replica_allocates() {
    let pki = Pki::new(&["org1", "org2"]);
    let (a, b, _dirs) = replicas(&pki);
    assert!(a.is_sibling(b.me()));
    // registered while no stream is up: sent when it opens
    a.store()
        .put_local_nodes(&[local_node("n1", "10.0.0.1")])
        .expect("put");
    assert!(b.is_allocation_leader(), "alone, b allocates");

    let (a_end, b_end) = pair(&a, &b);
    until(&b, "b holds a's registration", || {
        b.store().local_nodes().expect("nodes").contains_key("n1")
    })
    .await;
    assert_eq!(
        b.store().local_rpc().expect("rpc")["n1"],
        "http://10.0.0.1:8545"
    );
    until(&b, "b follows the lower replica", || {
        !b.is_allocation_leader()
    })
    .await;
    assert!(a.is_allocation_leader());
    assert_eq!(b.live_siblings(), [""]);

    // live changes: an allocation by the leader, a registration and a removal at b
    let change = crate::addressing::AllocationChange {
        set: vec![(
            "org2/n7".into(),
            crate::addressing::LocalAddress {
                ip: "127.77.0.1".parse().expect("ip"),
                ports: [("p2p".to_owned(), 30303)].into(),
            },
        )],
        ..Default::default()
    };
    let (_, entries) = a.store().write_shared_allocations(&change).expect("write");
    let rev = b.shared_allocations_rev();
    a.share_site(&entries);
    until(&b, "b serves the leader's allocation", || {
        b.shared_allocations_rev() > rev
    })
    .await;
    assert_eq!(
        b.store().allocations().expect("allocations").nodes,
        a.store().allocations().expect("allocations").nodes
    );
    let added = b
        .store()
        .put_local_nodes(&[local_node("n2", "10.0.0.2")])
        .expect("put");
    b.share_site(&added);
    let gone = b.store().remove_local_node("n1").expect("remove");
    b.share_site(&gone);
    until(&a, "a holds b's changes", || {
        let nodes = a.store().local_nodes().expect("nodes");
        nodes.contains_key("n2") && !nodes.contains_key("n1")
    })
    .await;
    assert_eq!(
        a.store().shared_entries().expect("entries"),
        b.store().shared_entries().expect("entries")
    );

    // site state is for siblings only: another site's gateway gets none of it
    let dir = tempfile::tempdir().expect("tempdir");
    let c = membership(&pki, "org2", dir.path(), |_| {});
    let (ac, ca) = pair(&a, &c);
    until(&a, "a and c linked", || a.is_connected("org2/dc1")).await;
    a.share_site(&added);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(c.store().shared_entries().expect("entries").is_empty());
    assert!(c.store().local_nodes().expect("nodes").is_empty());
    assert!(!ac.is_finished() && !ca.is_finished());

    // the leader leaves: b allocates
    a.close_all();
    ended(a_end, Duration::from_secs(10)).await;
    ended(b_end, Duration::from_secs(10)).await;
    until(&b, "b leads once a is gone", || b.is_allocation_leader()).await;
}

#[tokio::test(start_paused = true)]
async fn site_state_from_another_site_ends_the_stream() {
    let pki = Pki::new(&["org1", "org2"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let a = membership(&pki, "org1", dir.path(), |_| {});
    let (peer_tx, peer_out) = mpsc::channel(QUEUE);
    for m in [
        Msg::Open(pb::SyncOpen {
            version: SYNC_PROTOCOL_VERSION,
            site: "dc1".into(),
            outbound_only: false,
        }),
        Msg::SiteState(pb::SyncSiteState {
            replica: "b".into(),
            entries: vec![],
        }),
    ] {
        peer_tx.send(msg(m)).await.expect("queue");
    }
    let (a_tx, _a_out) = mpsc::channel(QUEUE);
    let session = tokio::spawn(run(
        a.clone(),
        id("org2"),
        false,
        ReceiverStream::new(peer_out).map(Ok::<_, tonic::Status>),
        a_tx,
        CancellationToken::new(),
    ));
    let end = ended(session, Duration::from_secs(10)).await;
    assert!(matches!(end, SessionEnd::Protocol(_)), "{end}");
    drop(peer_tx);
}
