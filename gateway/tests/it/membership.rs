//! Membership across gateways started in-process: convergence, removal, relay around a refused
//! link, restart and partition heal, outbound-only sites, revocation, and admission votes.

use std::time::{Duration, Instant};

use crate::support::*;
use fedgw_gateway::config::Admission;
use fedgw_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_gateways_share_nodes_and_removals() {
    let mut fed = Fed::with_orgs(5).await;
    fed.converged().await;
    let members = fed.gws[4]
        .admin()
        .await
        .list_members(pb::ListMembersRequest {})
        .await
        .expect("members");
    let orgs: Vec<_> = members
        .into_inner()
        .members
        .into_iter()
        .map(|m| m.org)
        .collect();
    assert_eq!(orgs, ["org1", "org2", "org3", "org4", "org5"]);

    fed.gws[2]
        .admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec("node1", 3, "10.3.0.1")),
        })
        .await
        .expect("add");
    fed.converged().await;
    for g in &fed.gws {
        assert_eq!(g.node_names(), ["org3/node1"], "at {}", g.org);
    }
    // the real address stays at its own site
    let at_home = fed.gws[2]
        .admin()
        .await
        .list_nodes(pb::ListNodesRequest {})
        .await
        .expect("nodes");
    assert_eq!(at_home.into_inner().nodes[0].local_host, "10.3.0.1");
    let elsewhere = fed.gws[0]
        .admin()
        .await
        .list_nodes(pb::ListNodesRequest {})
        .await
        .expect("nodes");
    assert_eq!(elsewhere.into_inner().nodes[0].local_host, "");

    fed.gws[2]
        .admin()
        .await
        .remove_node(pb::RemoveNodeRequest {
            name: "node1".into(),
        })
        .await
        .expect("remove");
    fed.converged().await;
    for g in &fed.gws {
        assert!(g.node_names().is_empty(), "at {}", g.org);
    }
    let status = fed.gws[0].status().await;
    assert_eq!(
        status
            .peers
            .iter()
            .filter(|p| p.state == "connected")
            .count(),
        4,
        "{status:?}"
    );
    assert_eq!(status.rejected_records, 0);
    fed.stop_all().await;
}

/// A gateway advertised by host name: the status of its peer shows the name and the addresses
/// it resolved to, and so does its own status; an IP literal is shown as its own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_advertised_names_with_the_addresses_they_resolved_to() {
    let mut fed = Fed::found(Admission::Operator).await;
    fed.add("org2", false, |c| c.advertise = vec!["localhost:0".into()])
        .await;
    fed.converged().await;
    let org2 = fed.gws[1].status().await;
    let [own] = org2.advertise.as_slice() else {
        panic!("one advertised endpoint: {org2:?}");
    };
    assert!(own.endpoint.starts_with("localhost:"), "{own:?}");
    assert_eq!(own.addresses, ["127.0.0.1", "::1"], "{own:?}");
    assert!(own.resolved_unix_ms > 0 && own.error.is_empty(), "{own:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let org1 = fed.gws[0].status().await;
        let peer = org1.peers.iter().find(|p| p.org == "org2").cloned();
        if let Some(p) = peer.filter(|p| p.state == "connected") {
            assert_eq!(p.advertise.len(), 1, "{p:?}");
            assert_eq!(p.advertise[0].endpoint, own.endpoint);
            assert_eq!(p.advertise[0].addresses, ["127.0.0.1", "::1"]);
            let [me] = org1.advertise.as_slice() else {
                panic!("{org1:?}");
            };
            let ip = me.endpoint.rsplit_once(':').map(|(h, _)| h.to_owned());
            assert_eq!(Some(me.addresses.join(",")), ip, "an IP literal: {me:?}");
            break;
        }
        assert!(Instant::now() < deadline, "org2 never connected: {org1:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fed.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_by_relay_when_a_link_is_refused() {
    let mut fed = Fed::found(Admission::Operator).await;
    fed.add("org2", false, |_| {}).await;
    // org3 learns of org2's gateway only from the view it joins with (it refuses org1, its
    // only other way in), so org1 must hold org2's gateway record by then
    fed.converged().await;
    // org1 and org3 refuse each other; only org2 links them
    fed.add("org3", false, |c| c.sync.deny = vec!["org1/dc1".into()])
        .await;
    fed.gws[0].stop().await;
    edit_config(&fed.gws[0].dir, |c| c.sync.deny = vec!["org3/dc1".into()]);
    fed.gws[0].start().await;
    fed.converged().await;

    fed.gws[2]
        .admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec("far", 7, "10.3.0.7")),
        })
        .await
        .expect("add");
    fed.converged().await;
    assert_eq!(fed.gws[0].node_names(), ["org3/far"]);
    let peers = fed.gws[0].run().membership.peer_reports();
    assert!(
        peers
            .iter()
            .all(|p| p.id.org != "org3" || p.state != "connected"),
        "{peers:?}"
    );
    fed.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_keeps_its_records_and_a_partition_heals() {
    let mut fed = Fed::with_orgs(3).await;
    fed.gws[1]
        .admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec("a", 1, "10.2.0.1")),
        })
        .await
        .expect("add");
    fed.converged().await;
    fed.gws[2].stop().await;
    // while org3 is down the others change their nodes
    let admin1 = fed.gws[1].admin().await;
    let mut admin1 = admin1;
    admin1
        .add_node(pb::AddNodeRequest {
            node: Some(spec("b", 2, "10.2.0.2")),
        })
        .await
        .expect("add");
    admin1
        .remove_node(pb::RemoveNodeRequest { name: "a".into() })
        .await
        .expect("rm");
    fed.gws[0]
        .admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec("c", 3, "10.1.0.3")),
        })
        .await
        .expect("add");
    // org3 comes back cut off from both (a partition) and changes its own view meanwhile
    edit_config(&fed.gws[2].dir, |c| {
        c.sync.deny = vec!["org1/dc1".into(), "org2/dc1".into()]
    });
    fed.gws[2].start().await;
    assert_eq!(
        fed.gws[2].node_names(),
        ["org2/a"],
        "what it had survived the restart"
    );
    fed.gws[2]
        .admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec("d", 4, "10.3.0.4")),
        })
        .await
        .expect("add");
    for g in &mut fed.gws[..2] {
        g.stop().await;
        edit_config(&g.dir, |c| c.sync.deny = vec!["org3/dc1".into()]);
        g.start().await;
    }
    assert_ne!(
        fed.gws[0].digest(),
        fed.gws[2].digest(),
        "partitioned views differ"
    );
    // heal: lift the deny lists
    for g in &mut fed.gws {
        g.stop().await;
        edit_config(&g.dir, |c| c.sync.deny.clear());
        g.start().await;
    }
    fed.converged().await;
    for g in &fed.gws {
        assert_eq!(
            g.node_names(),
            ["org1/c", "org2/b", "org3/d"],
            "at {}",
            g.org
        );
    }
    fed.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_only_site_is_reached_over_its_own_connections() {
    let mut fed = Fed::found(Admission::Operator).await;
    fed.add("org2", false, |_| {}).await;
    // org3 advertises an address nobody can reach: only its own dials can link it
    fed.add("org3", true, |c| c.advertise = vec!["127.0.0.1:1".into()])
        .await;
    fed.converged().await;
    fed.gws[2]
        .admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec("nat", 9, "192.168.1.9")),
        })
        .await
        .expect("add");
    fed.gws[0]
        .admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec("pub", 8, "10.1.0.8")),
        })
        .await
        .expect("add");
    fed.converged().await;
    assert_eq!(fed.gws[0].node_names(), ["org1/pub", "org3/nat"]);
    for g in &fed.gws[..2] {
        let peers = g.run().membership.peer_reports();
        let org3 = peers
            .iter()
            .find(|p| p.id.org == "org3")
            .expect("org3 linked");
        assert_eq!(
            (org3.state, org3.direction),
            ("connected", "inbound"),
            "at {}",
            g.org
        );
    }
    fed.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_sessions_and_refuses_handshakes_within_a_second() {
    let mut fed = Fed::with_orgs(3).await;
    fed.gws[2]
        .admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec("n", 3, "10.3.0.1")),
        })
        .await
        .expect("add");
    fed.converged().await;
    // a live session with org3 must exist for its closing to mean anything
    wait_for("org2 linked with org3", || {
        fed.gws[1].run().membership.is_connected("org3/dc1")
    })
    .await;
    let started = Instant::now();
    fed.gws[0]
        .admin()
        .await
        .revoke(pb::RevokeRequest {
            org: "org3".into(),
            reason: "test".into(),
        })
        .await
        .expect("revoke");
    wait_for("org3 cut off everywhere", || {
        fed.gws[..2].iter().all(|g| {
            let m = &g.run().membership;
            !m.is_connected("org3/dc1")
                && m.revocation().set().contains("org3")
                && g.node_names().is_empty()
        })
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // org3's new handshakes fail at every other gateway
    let org3_dir = &fed.gws[2].dir;
    for g in &fed.gws[..2] {
        let out = hello_as(org3_dir, &g.run().info.advertise[0]).await;
        assert!(out.is_err(), "org3 still accepted by {}", g.org);
    }
    let members = fed.gws[1]
        .admin()
        .await
        .list_members(pb::ListMembersRequest {})
        .await
        .expect("m")
        .into_inner();
    let org3 = members
        .members
        .iter()
        .find(|m| m.org == "org3")
        .expect("listed");
    assert_eq!(org3.status, "revoked");
    fed.stop_all().await;
}

async fn hello_as(
    dir: &fedgw_gateway::datadir::DataDir,
    endpoint: &str,
) -> Result<fedgw_gateway::federation::HelloOutcome, fedgw_gateway::federation::HelloError> {
    let (_, cfg) =
        fedgw_gateway::provision::federation_client_config(dir, None).expect("client config");
    fedgw_gateway::federation::hello(endpoint, cfg, DOMAIN, "dc1", Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_admission_waits_for_enough_approvals() {
    let mut fed = Fed::found(Admission::Majority).await;
    // one member: one approval (org1's) admits org2
    let token = fed.invite("org2").await;
    approve(&fed, 0, "org2").await;
    fed.admit("org2", token, false, |_| {}).await;
    // two members: both must approve org3, once invited; no vote before that
    fed.converged().await;
    for gw in [0, 1] {
        let refused = fed.gws[gw]
            .admin()
            .await
            .approve(pb::ApproveRequest { org: "org3".into() })
            .await
            .expect_err("approved an org nobody invited");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
        assert!(
            refused.message().contains("no pending join of org3"),
            "{refused}"
        );
    }
    assert!(
        fed.gws[0]
            .run()
            .membership
            .read(|v| v.candidates().is_empty())
    );
    let token = fed.invite("org3").await;
    approve(&fed, 0, "org3").await;
    approve(&fed, 1, "org3").await;
    fed.admit("org3", token, false, |_| {}).await;
    fed.converged().await;

    // three members: org4 needs two approvals
    let token = fed.invite("org4").await;
    let dir = fedgw_gateway::datadir::DataDir::new(fed.path("org4"));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u32, u32)>::new()));
    let seen2 = seen.clone();
    let joiner = tokio::spawn(async move {
        let progress =
            move |p: &pb::Pending| seen2.lock().expect("lock").push((p.approvals, p.needed));
        fedgw_gateway::join::client::join_into(
            token,
            "org4",
            &dir,
            &network(false),
            WAIT,
            &progress,
        )
        .await
    });
    approve(&fed, 1, "org4").await;
    wait_for("org4 pending with one approval", || {
        seen.lock().expect("lock").contains(&(1, 2))
    })
    .await;
    assert!(!joiner.is_finished(), "admitted with one approval");
    assert!(!fed.gws[0].run().membership.read(|v| v.is_member("org4")));
    approve(&fed, 2, "org4").await;
    let config = tokio::time::timeout(WAIT, joiner)
        .await
        .expect("in time")
        .expect("task")
        .expect("admitted");
    assert_eq!(config.org, "org4");
    assert!(fed.gws[0].run().membership.read(|v| v.is_member("org4")));
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.iter().all(|(a, n)| *n == 2 && *a < 2), "{seen:?}");
    fed.stop_all().await;
}

/// Approves `org` at gateway `gw` once the invite has reached it (a gateway refuses to approve
/// an org it holds no pending join of), then waits until the founder saw the vote.
async fn approve(fed: &Fed, gw: usize, org: &str) {
    wait_for("the pending join synced", || {
        fed.gws[gw]
            .run()
            .membership
            .read(|v| v.candidates().contains(org))
    })
    .await;
    fed.gws[gw]
        .admin()
        .await
        .approve(pb::ApproveRequest { org: org.into() })
        .await
        .expect("approve");
    // the founder (which admits) must have seen the vote
    wait_for("vote at the founder", || {
        fed.gws[0]
            .run()
            .membership
            .read(|v| v.approvals_for(org).contains(&fed.gws[gw].org))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_renewed_before_they_outlive_their_certificates() {
    let mut fed = Fed::found(Admission::Operator).await;
    fed.add("org2", false, |c| c.sync.max_session_ms = Some(300))
        .await;
    fed.converged().await;
    let since = |fed: &Fed| {
        fed.gws[0]
            .run()
            .membership
            .peer_reports()
            .into_iter()
            .find(|p| p.id.to_string() == "org2/dc1" && p.state == "connected")
            .map(|p| p.since_ms)
    };
    wait_for("org1 linked with org2", || since(&fed).is_some()).await;
    let first = since(&fed);
    // the session ends at its maximum age and is dialled again
    wait_for("a newer session", || {
        since(&fed).is_some_and(|s| Some(s) > first)
    })
    .await;
    fed.gws[1]
        .admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec("after", 5, "10.2.0.5")),
        })
        .await
        .expect("add");
    fed.converged().await;
    assert_eq!(fed.gws[0].node_names(), ["org2/after"]);
    fed.stop_all().await;
}

/// A node's site-internal address never leaves its site: the signed record carries the Tessera
/// URL under the node's consortium name, the registering site keeps (and lists) the URL it was
/// given, and a record published before with an internal URL still loads and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_tessera_url_names_the_node_not_its_internal_host() {
    let mut fed = Fed::with_orgs(2).await;
    let mut node = spec("node1", 0x31, "10.1.0.11");
    node.tessera_url = "http://quorum-node1:9001/partyinfo".into();
    fed.gws[0]
        .admin()
        .await
        .add_node(pb::AddNodeRequest { node: Some(node) })
        .await
        .expect("add");
    fed.converged().await;
    let published = "http://node1.org1.acme.test:9001/partyinfo";
    for g in &fed.gws {
        let url = g
            .run()
            .membership
            .read(|v| v.nodes()[0].node.tessera_url.clone());
        assert_eq!(
            url.as_deref(),
            Some(published),
            "the signed record at {}",
            g.org
        );
    }
    let listed = |i: usize| {
        let admin = fed.gws[i].admin();
        async move {
            admin
                .await
                .list_nodes(pb::ListNodesRequest {})
                .await
                .expect("nodes")
                .into_inner()
                .nodes[0]
                .record
                .clone()
                .expect("record")
                .tessera_url
        }
    };
    assert_eq!(
        listed(0).await,
        "http://quorum-node1:9001/partyinfo",
        "at home"
    );
    assert_eq!(listed(1).await, published, "elsewhere");

    // a record published before (an internal URL in it) is still accepted as it is
    let org_ca = fedgw_gateway::provision::load(&fed.gws[0].dir)
        .expect("org1's data dir")
        .org_ca;
    let old = fedgw_gateway::membership::record::seal(
        &org_ca.envelope_signer().expect("signer"),
        "org1",
        "node2",
        1,
        pb::record_body::Body::Node(pb::NodeRecord {
            client: pb::ClientKind::Tessera.into(),
            tessera_url: "http://10.1.0.12:9000".into(),
            tessera_keys: vec![vec![7; 32]],
            site: "dc1".into(),
            ..Default::default()
        }),
    )
    .expect("seal");
    let report = fed.gws[1]
        .run()
        .membership
        .ingest(vec![old], None)
        .await
        .expect("ingest");
    assert_eq!(report.accepted, 1, "{:?}", report.rejected);
    let url = fed.gws[1].run().membership.read(|v| {
        v.nodes()
            .into_iter()
            .find(|n| n.name == "node2")
            .and_then(|n| n.node.tessera_url)
    });
    assert_eq!(url.as_deref(), Some("http://10.1.0.12:9000"));
    fed.stop_all().await;
}
