use std::collections::BTreeMap;

use crate::addressing::{AddressMode, AllocationChange, LocalAddress};
use crate::site::shared::{Entry, SharedKey, TOMBSTONE_KEEP_MS, Value};
use crate::store::{LocalNode, Store};

fn replica(dir: &tempfile::TempDir, name: &str) -> Store {
    let s = Store::open(&dir.path().join(format!("{name}.redb"))).expect("open");
    s.set_replica(name);
    s
}

fn node(name: &str, host: &str) -> LocalNode {
    LocalNode {
        name: name.into(),
        host: host.into(),
        replicas: vec![format!("{host}-b")],
        tessera_url: Some(format!("http://{host}:9000")),
        rpc_url: None,
    }
}

fn addr(ip: &str) -> LocalAddress {
    LocalAddress {
        ip: ip.parse().expect("ip"),
        ports: [("p2p".to_owned(), 30303)].into(),
    }
}

fn set(nodes: &[(&str, &str)]) -> AllocationChange {
    AllocationChange {
        set: nodes
            .iter()
            .map(|(k, ip)| ((*k).to_owned(), addr(ip)))
            .collect(),
        ..Default::default()
    }
}

fn served(s: &Store) -> BTreeMap<String, String> {
    s.allocations()
        .expect("allocations")
        .nodes
        .into_iter()
        .map(|(k, a)| (k, a.ip.to_string()))
        .collect()
}

#[test]
fn a_registration_made_at_one_replica_is_held_at_the_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (replica(&dir, "a"), replica(&dir, "b"));
    let mode = AddressMode::default();
    let entries = a
        .put_local_nodes(&[node("n1", "10.0.0.1"), node("n2", "10.0.0.2")])
        .expect("put");
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.replica == "a"));
    let applied = b.apply_shared(&entries, &mode).expect("apply");
    assert_eq!(applied.taken, 2);
    assert!(applied.nodes && !applied.allocations);
    assert_eq!(
        b.local_nodes().expect("nodes"),
        a.local_nodes().expect("nodes")
    );
    assert_eq!(b.local_urls().expect("urls"), a.local_urls().expect("urls"));
    assert_eq!(
        b.local_replicas().expect("replicas"),
        a.local_replicas().expect("replicas")
    );
    assert_eq!(b.shared_entries().expect("entries"), entries);
    // the same entries again change nothing
    assert_eq!(b.apply_shared(&entries, &mode).expect("apply").taken, 0);

    // removed at b: the tombstone removes it at a
    let gone = b.remove_local_node("n1").expect("remove");
    assert_eq!(gone.len(), 1);
    assert!(gone[0].value.is_none() && gone[0].replica == "b");
    assert!(gone[0].version > entries[0].version);
    a.apply_shared(&gone, &mode).expect("apply");
    assert!(!a.local_nodes().expect("nodes").contains_key("n1"));
    assert!(!a.local_urls().expect("urls").contains_key("n1"));
    // the older registration arriving late does not bring it back
    a.apply_shared(&entries, &mode).expect("apply");
    assert!(!a.local_nodes().expect("nodes").contains_key("n1"));
}

#[test]
fn allocations_follow_the_leader_and_a_conflict_keeps_the_lower_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (replica(&dir, "a"), replica(&dir, "b"));
    let mode = AddressMode::default();
    let (_, entries) = a
        .write_shared_allocations(&set(&[
            ("org2/n1", "127.77.0.1"),
            ("org2/n2", "127.77.0.2"),
        ]))
        .expect("write");
    let applied = b.apply_shared(&entries, &mode).expect("apply");
    assert!(applied.allocations && applied.conflicts.is_empty());
    assert_eq!(served(&b), served(&a));

    // a partition: both allocate org3/n5, b later and elsewhere, and b gives org3/n6 the
    // address a gave org3/n5
    let (_, at_a) = a
        .write_shared_allocations(&set(&[("org3/n5", "127.77.0.3")]))
        .expect("write");
    let (_, at_b) = b
        .write_shared_allocations(&set(&[
            ("org3/n5", "127.77.0.4"),
            ("org3/n6", "127.77.0.3"),
        ]))
        .expect("write");
    let healed_b = b.apply_shared(&at_a, &mode).expect("apply");
    let healed_a = a.apply_shared(&at_b, &mode).expect("apply");
    assert_eq!(served(&a), served(&b), "both replicas serve the same");
    assert_eq!(served(&a)["org3/n5"], "127.77.0.3", "a's allocation kept");
    assert!(
        !served(&a).contains_key("org3/n6"),
        "the node that lost its address waits for a new one"
    );
    assert_eq!(healed_a.conflicts.len(), 2, "{:?}", healed_a.conflicts);
    assert_eq!(healed_b.conflicts.len(), 2, "{:?}", healed_b.conflicts);
    assert_eq!(
        a.shared_entries().expect("entries"),
        b.shared_entries().expect("entries")
    );

    // the leader gives the loser a new address: no conflict, both serve it
    let (_, again) = a
        .write_shared_allocations(&set(&[("org3/n6", "127.77.0.9")]))
        .expect("write");
    let applied = b.apply_shared(&again, &mode).expect("apply");
    assert!(applied.conflicts.is_empty(), "{:?}", applied.conflicts);
    assert_eq!(served(&b)["org3/n6"], "127.77.0.9");
    assert_eq!(served(&a), served(&b));
}

#[test]
fn rows_without_entries_are_adopted_and_old_tombstones_purged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = replica(&dir, "a");
    // rows written as a store before sharing held them
    a.put_local_node("n1", "10.0.0.1").expect("put");
    a.write_allocations(&set(&[("org2/n1", "127.77.0.1")]))
        .expect("write");
    let old = Entry {
        key: SharedKey::Node("gone".into()),
        version: 1,
        replica: "b".into(),
        value: None,
    };
    let recent = Entry {
        key: SharedKey::Node("recent".into()),
        version: super::now_ms() - TOMBSTONE_KEEP_MS / 2,
        replica: "b".into(),
        value: None,
    };
    a.apply_shared(&[old, recent.clone()], &AddressMode::default())
        .expect("apply");
    let tx = a.db.begin_write().expect("tx");
    tx.open_table(super::SITE_SHARED)
        .expect("table")
        .retain(|k, _| k.starts_with("node/gone") || k.starts_with("node/recent"))
        .expect("retain");
    tx.commit().expect("commit");

    assert_eq!(a.adopt_shared().expect("adopt"), 2);
    let entries = a.shared_entries().expect("entries");
    let keys: Vec<String> = entries.iter().map(|e| e.key.to_string()).collect();
    assert_eq!(keys, ["alloc/org2/n1", "node/n1", "node/recent"]);
    assert!(matches!(&entries[1].value, Some(Value::Node(r)) if r.host == "10.0.0.1"));
    assert_eq!(entries[2], recent);
    assert_eq!(a.adopt_shared().expect("adopt"), 0, "nothing left to adopt");
}
