//! Replicas of a site, as real processes: `fedgw replica add` writes a bundle that only its
//! passphrase opens, `fedgw replica join` makes a data dir of it, and the new replica starts,
//! fills its store from its sibling, publishes its own Gateway record and is seen by the
//! other site with both replicas' endpoints.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fedgw_tests::wait_for;

use crate::common::procs::{NET, fast, fedgw, json, s};

/// Founds org1 in `tmp/org1` and joins org2 into `tmp/org2` (neither started).
fn consortium(tmp: &Path) -> (PathBuf, PathBuf) {
    let (o1, o2) = (tmp.join("org1"), tmp.join("org2"));
    let mut args = vec!["init", "--consortium", "acme", "--domain", "acme.test"];
    let d1 = s(&o1);
    args.extend(["--org", "org1", "--data-dir", &d1]);
    args.extend(NET);
    fedgw().run(args).expect("spawn").ok().expect("init");
    fast(&o1);
    (o1, o2)
}

fn join(o1: &Path, o2: &Path) {
    let token = fedgw()
        .run(["invite", "org2", "--data-dir", &s(o1)])
        .expect("spawn")
        .ok()
        .expect("invite");
    let d2 = s(o2);
    let mut args = vec![
        "join",
        token.stdout.trim(),
        "--org",
        "org2",
        "--data-dir",
        &d2,
    ];
    args.extend(NET);
    fedgw().run(args).expect("spawn").ok().expect("join");
    fast(o2);
}

/// `fedgw replica add NAME` at `from` and `fedgw replica join` into `to` (not started).
fn add_replica(tmp: &Path, from: &Path, name: &str, to: &Path) {
    let pw = tmp.join("passphrase");
    std::fs::write(&pw, "correct horse\n").expect("write");
    let bundle = tmp.join(format!("{name}.bundle"));
    let add = fedgw()
        .run([
            "replica",
            "add",
            name,
            "--advertise",
            "127.0.0.1:0",
            "--out",
            &s(&bundle),
            "--data-dir",
            &s(from),
            "--passphrase-file",
            &s(&pw),
        ])
        .expect("spawn");
    assert_eq!(add.code, Some(0), "{}", add.stderr);
    let join = fedgw()
        .run([
            "replica",
            "join",
            &s(&bundle),
            "--data-dir",
            &s(to),
            "--listen",
            "127.0.0.1:0",
            "--dns",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--passphrase-file",
            &s(&pw),
        ])
        .expect("spawn");
    assert_eq!(join.code, Some(0), "{}", join.stderr);
    fast(to);
}

/// The gateways of `org` that `dir` knows: `site[/replica]=endpoint`.
fn gateways_of(dir: &Path, org: &str) -> Vec<String> {
    let mut out: Vec<String> = json(dir, "members")
        .as_array()
        .expect("array")
        .iter()
        .filter(|m| m["org"] == org)
        .flat_map(|m| m["gateways"].as_array().cloned().unwrap_or_default())
        .map(|g| {
            let replica = g["replica"].as_str().unwrap_or_default();
            format!(
                "{}{}{}={}",
                g["site"].as_str().unwrap_or_default(),
                if replica.is_empty() { "" } else { "/" },
                replica,
                g["advertise"][0].as_str().unwrap_or_default()
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_replica_joins_from_a_bundle_syncs_from_its_sibling_and_every_site_sees_both() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (o1, o2) = consortium(tmp.path());
    let gw1 = fedgw().start(&o1).expect("org1");
    join(&o1, &o2);
    let gw2 = fedgw().start(&o2).expect("org2");
    let r2 = tmp.path().join("org2-r2");
    add_replica(tmp.path(), &o2, "r2", &r2);

    // only the passphrase opens the bundle; a refused join leaves no data dir behind
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "battery staple\n").expect("write");
    let refused = fedgw()
        .run([
            "replica",
            "join",
            &s(&tmp.path().join("r2.bundle")),
            "--data-dir",
            &s(&tmp.path().join("other")),
            "--passphrase-file",
            &s(&wrong),
        ])
        .expect("spawn");
    assert_ne!(refused.code, Some(0));
    assert!(refused.stderr.contains("passphrase"), "{}", refused.stderr);
    assert!(!tmp.path().join("other").join("fedgw.toml").exists());
    // the bundle carries neither the root key nor a leaf
    assert!(!r2.join("root-ca.key").exists() && !r2.join("gateway.key").exists());
    let config = fedgw_gateway::config::Config::load(&r2.join("fedgw.toml")).expect("config");
    assert_eq!((config.replica.as_str(), config.replica_index), ("r2", 1));
    assert_eq!((config.org.as_str(), config.site.as_str()), ("org2", "dc1"));

    let gw2r2 = fedgw().start(&r2).expect("org2 replica r2");
    let want = {
        let mut w = vec![
            format!("dc1={}", gw2.endpoint()),
            format!("dc1/r2={}", gw2r2.endpoint()),
        ];
        w.sort();
        w
    };
    for dir in [&o1, &o2, &r2] {
        wait_for("both replicas' records", Duration::from_secs(20), || {
            (gateways_of(dir, "org2") == want).then_some(())
        })
        .unwrap_or_else(|_| panic!("{}: {:?}", dir.display(), gateways_of(dir, "org2")));
    }
    // the sibling stream: each replica lists the other as a connected peer
    let sibling_connected = |dir: &Path, replica: &str| {
        json(dir, "status")["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .any(|p| p["org"] == "org2" && p["replica"] == replica && p["state"] == "connected")
    };
    wait_for("the sibling stream", Duration::from_secs(20), || {
        (sibling_connected(&o2, "r2") && sibling_connected(&r2, "")).then_some(())
    })
    .expect("siblings keep a sync stream");
    let metrics = fedgw_tests::http_get(&gw2r2.metrics(), "/metrics")
        .expect("metrics")
        .1;
    assert!(
        metrics.contains("fedgw_site_replicas{state=\"connected\"} 1"),
        "{metrics}"
    );
    drop((gw1, gw2, gw2r2));
}

/// The replica of org2/dc1 whose link org1's new streams use, per `fedgw status --json`.
fn link_in_use(dir: &Path) -> Option<String> {
    json(dir, "status")["tunnels"]
        .as_array()?
        .iter()
        .find(|t| t["org"] == "org2" && t["in_use"] == true)
        .and_then(|t| t["replica"].as_str().map(str::to_owned))
}

/// Issue 32: org2's site runs two replicas; connections from org1 to a node at org2 go over
/// one replica's link, that replica is SIGKILLed, and they move to the other's link (goal:
/// within 2 s; the time is printed, more than 5 s fails), with at most 10 failed connections.
#[test]
fn connections_to_a_replicated_site_move_to_the_other_replica_after_a_sigkill() {
    use crate::links::{echo, echo_node_at, edit, sigkill};
    use fedgw_gateway::tunnel::Transport;
    use std::time::Instant;

    let tmp = tempfile::tempdir().expect("tempdir");
    let (o1, o2) = consortium(tmp.path());
    let site = |i: u8| {
        move |c: &mut fedgw_gateway::config::Config| {
            c.tunnel.transport = Transport::Quic;
            c.tunnel.allow_loopback_targets = true;
            c.addresses = fedgw_gateway::addressing::AddressMode::Ip {
                pool: format!("127.84.{i}.0/24"),
                interface: None,
            };
        }
    };
    edit(&o1, site(1));
    let gw1 = fedgw().start(&o1).expect("org1");
    join(&o1, &o2);
    edit(&o2, site(2));
    let gw2 = fedgw().start(&o2).expect("org2");
    let r2 = tmp.path().join("org2-r2");
    add_replica(tmp.path(), &o2, "r2", &r2);
    edit(&r2, site(3));
    let gw2r2 = fedgw().start(&r2).expect("org2 replica r2");
    // the node is registered at both replicas: either can reach it
    let addr = echo_node_at(&o1, &[&o2, &r2]);
    // org1 (the lower site) keeps a link to each replica
    wait_for("links to both replicas", Duration::from_secs(20), || {
        let tunnels = json(&o1, "status")["tunnels"].as_array().cloned()?;
        (tunnels.iter().filter(|t| t["org"] == "org2").count() == 2).then_some(())
    })
    .expect("two links");
    let in_use = wait_for("the link in use", Duration::from_secs(10), || {
        link_in_use(&o1)
    })
    .expect("a link in use");
    for _ in 0..5 {
        echo(addr, b"before", Duration::from_secs(2)).expect("echo before the kill");
    }

    let (victim, survivor, survivor_name) = if in_use.is_empty() {
        (gw2, gw2r2, "r2")
    } else {
        (gw2r2, gw2, "")
    };
    sigkill(victim);
    let killed = Instant::now();
    let mut failures = 0;
    let recovered = loop {
        let started = Instant::now();
        match echo(addr, b"during", Duration::from_secs(3)) {
            Ok(()) if started >= killed => break killed.elapsed(),
            Ok(()) => {}
            Err(_) => failures += 1,
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "no echo after the kill\norg1: {}",
            gw1.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // the goal is 2 s (1.5 s measured on an idle machine); on a loaded one the dead link's
    // detection runs late, so the bound asserted is 5 s and a miss of the goal is printed
    if recovered > Duration::from_secs(2) {
        eprintln!("failover {recovered:?}: over the 2 s goal");
    }
    assert!(
        recovered <= Duration::from_secs(5),
        "first echo {recovered:?} after the kill ({failures} failed)\norg1: {}",
        gw1.log_text()
    );
    assert!(failures <= 10, "{failures} connections failed");
    eprintln!("failover: first echo {recovered:?} after the kill, {failures} connections failed");
    // from here on every connection goes through, over the survivor's link
    for _ in 0..20 {
        echo(addr, b"after", Duration::from_secs(2)).expect("echo after the failover");
    }
    assert_eq!(link_in_use(&o1).as_deref(), Some(survivor_name));
    drop((gw1, survivor));
}
