use super::*;

fn ip_mode() -> AddressMode {
    AddressMode::default()
}

fn alloc(node: &str, version: u64, replica: &str, ip: &str) -> Entry {
    Entry {
        key: format!("alloc/{node}").parse().expect("key"),
        version,
        replica: replica.into(),
        value: Some(Value::Allocation(LocalAddress {
            ip: ip.parse().expect("ip"),
            ports: [("p2p".to_owned(), 30303)].into(),
        })),
    }
}

fn node(name: &str, version: u64, replica: &str, host: Option<&str>) -> Entry {
    Entry {
        key: SharedKey::Node(name.into()),
        version,
        replica: replica.into(),
        value: host.map(|h| {
            Value::Node(Registration {
                host: h.into(),
                replicas: vec![],
                tessera_url: None,
                rpc_url: None,
            })
        }),
    }
}

#[test]
fn the_later_writer_wins_and_the_replica_name_breaks_ties() {
    let mode = ip_mode();
    let held = node("n1", 10, "b", Some("10.0.0.1"));
    assert!(merge(Some(&held), &node("n1", 11, "a", Some("10.0.0.2")), &mode).take);
    assert!(!merge(Some(&held), &node("n1", 9, "c", Some("10.0.0.2")), &mode).take);
    assert!(merge(Some(&held), &node("n1", 10, "c", Some("10.0.0.2")), &mode).take);
    assert!(!merge(Some(&held), &node("n1", 10, "a", Some("10.0.0.2")), &mode).take);
    assert!(
        !merge(Some(&held), &held, &mode).take,
        "the same entry again"
    );
    // a tombstone is an entry like any other
    let gone = node("n1", 12, "a", None);
    assert!(merge(Some(&held), &gone, &mode).take);
    assert!(!merge(Some(&gone), &held, &mode).take, "no resurrection");
    assert!(merge(None, &gone, &mode).take);
}

#[test]
fn merging_is_order_independent() {
    let mode = ip_mode();
    let entries = [
        node("n1", 10, "b", Some("10.0.0.1")),
        node("n1", 12, "", None),
        node("n1", 12, "a", Some("10.0.0.3")),
        node("n1", 11, "c", Some("10.0.0.4")),
    ];
    let fold = |order: &[usize]| {
        let mut held: Option<Entry> = None;
        for i in order {
            if merge(held.as_ref(), &entries[*i], &mode).take {
                held = Some(entries[*i].clone());
            }
        }
        held
    };
    let first = fold(&[0, 1, 2, 3]);
    assert_eq!(first.as_ref().map(|e| e.replica.as_str()), Some("a"));
    for order in [[3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]] {
        assert_eq!(fold(&order), first, "{order:?}");
    }
}

#[test]
fn of_two_differing_allocations_the_lower_replica_wins_whatever_the_versions() {
    let mode = ip_mode();
    let by_a = alloc("org2/n1", 100, "", "127.77.0.5");
    let by_b = alloc("org2/n1", 200, "b", "127.77.0.7");
    let m = merge(Some(&by_a), &by_b, &mode);
    assert_eq!(
        m,
        Merged {
            take: false,
            conflict: true
        }
    );
    let m = merge(Some(&by_b), &by_a, &mode);
    assert_eq!(
        m,
        Merged {
            take: true,
            conflict: true
        }
    );
    // the same address with other real ports (the node's record changed) is no conflict
    let mut ports = alloc("org2/n1", 300, "b", "127.77.0.5");
    if let Some(Value::Allocation(a)) = &mut ports.value {
        a.ports.insert("raft".into(), 50400);
    }
    let m = merge(Some(&by_a), &ports, &mode);
    assert_eq!(
        m,
        Merged {
            take: true,
            conflict: false
        }
    );
    // a deletion by the higher replica still wins over the older allocation
    let gone = Entry {
        value: None,
        ..alloc("org2/n1", 300, "b", "127.77.0.5")
    };
    assert!(merge(Some(&by_a), &gone, &mode).take);
}

#[test]
fn in_port_mode_another_local_port_is_a_conflict() {
    let mode = AddressMode::Port {
        ip: "10.0.0.5".parse().expect("ip"),
        first_port: 40000,
        last_port: 40100,
    };
    let a = alloc("org2/n1", 1, "", "10.0.0.5");
    let mut b = alloc("org2/n1", 2, "b", "10.0.0.5");
    assert!(!merge(Some(&a), &b, &mode).conflict);
    if let Some(Value::Allocation(x)) = &mut b.value {
        x.ports.insert("p2p".into(), 40001);
    }
    assert!(merge(Some(&a), &b, &mode).conflict);
}

#[test]
fn one_address_for_two_nodes_stays_with_the_lower_replica() {
    let mode = ip_mode();
    let entries = [
        alloc("org2/n1", 100, "b", "127.77.0.5"),
        alloc("org3/n9", 200, "", "127.77.0.5"),
        alloc("org2/n2", 50, "b", "127.77.0.6"),
        Entry {
            value: None,
            ..alloc("org2/n3", 60, "", "127.77.0.6")
        },
    ];
    let (served, lost) = effective(&entries, &mode);
    assert_eq!(
        served.keys().map(String::as_str).collect::<Vec<_>>(),
        ["org2/n2", "org3/n9"]
    );
    assert_eq!(lost, [("org2/n1".to_owned(), "org3/n9".to_owned())]);
    let changed: BTreeSet<String> = ["org2/n2".to_owned()].into();
    assert_eq!(new_losses(&lost, &changed).count(), 0);
    let changed: BTreeSet<String> = ["org3/n9".to_owned()].into();
    assert_eq!(new_losses(&lost, &changed).count(), 1);
    // the same replica's earlier claim wins
    let entries = [
        alloc("org2/n1", 100, "", "127.77.0.5"),
        alloc("org2/n0", 200, "", "127.77.0.5"),
    ];
    let (served, _) = effective(&entries, &mode);
    assert!(served.contains_key("org2/n1"));
}

#[test]
fn the_lowest_live_replica_allocates() {
    assert!(is_leader("", ["b", "c"]));
    assert!(is_leader("b", ["c"]));
    assert!(!is_leader("b", ["", "c"]));
    assert!(!is_leader("c", ["b"]));
    assert!(is_leader("c", []), "alone");
}

#[test]
fn versions_move_forward_and_tombstones_expire_after_a_week() {
    assert_eq!(next_version(None, 1000), 1000);
    assert_eq!(next_version(Some(5000), 1000), 5001, "a clock behind");
    assert_eq!(next_version(Some(500), 1000), 1000);
    let gone = node("n1", 1000, "", None);
    assert!(!expired(&gone, 1000 + TOMBSTONE_KEEP_MS));
    assert!(expired(&gone, 1001 + TOMBSTONE_KEEP_MS));
    assert!(!expired(&node("n1", 0, "", Some("h")), u64::MAX));
}

#[test]
fn entries_cross_the_wire_unchanged_and_bad_ones_are_refused() {
    let entries = [
        alloc("org2/n1", 100, "b", "127.77.0.5"),
        node("n1", 7, "", Some("10.0.0.1")),
        node("n2", 8, "r2", None),
        Entry {
            value: Some(Value::Node(Registration {
                host: "tm".into(),
                replicas: vec!["tm-2".into()],
                tessera_url: Some("http://tm:9000".into()),
                rpc_url: Some("http://n:8545".into()),
            })),
            ..node("tm", 9, "", None)
        },
    ];
    for e in &entries {
        let back = Entry::try_from(pb::SiteEntry::from(e)).expect("valid");
        assert_eq!(&back, e);
    }
    let good = pb::SiteEntry::from(&entries[0]);
    for bad in [
        pb::SiteEntry {
            key: "alloc/org2".into(),
            ..good.clone()
        },
        pb::SiteEntry {
            key: "other/x".into(),
            ..good.clone()
        },
        pb::SiteEntry {
            key: "node/n1".into(),
            ..good.clone()
        },
        pb::SiteEntry {
            replica: "Not A Label".into(),
            ..good.clone()
        },
        pb::SiteEntry {
            value: Some(pb::site_entry::Value::Allocation(pb::SiteAllocation {
                ip: "x".into(),
                ports: Default::default(),
            })),
            ..good.clone()
        },
        pb::SiteEntry {
            value: Some(pb::site_entry::Value::Allocation(pb::SiteAllocation {
                ip: "127.77.0.1".into(),
                ports: [("p2p".to_owned(), 70000)].into(),
            })),
            ..good.clone()
        },
    ] {
        assert!(Entry::try_from(bad.clone()).is_err(), "{bad:?}");
    }
    // a registration is checked as `fedgw node add` checks it: hosts that are dial targets,
    // at most MAX_REPLICAS of them
    let registered = pb::SiteEntry::from(&entries[3]);
    let with = |host: &str, replica_hosts: Vec<String>| pb::SiteEntry {
        value: Some(pb::site_entry::Value::Node(pb::SiteNode {
            host: host.into(),
            replica_hosts,
            ..Default::default()
        })),
        ..registered.clone()
    };
    assert!(Entry::try_from(with("tm", vec!["tm-2".into()])).is_ok());
    for bad in [
        with("bad host/x", vec![]),
        with("tm", vec!["".into()]),
        with("tm", vec!["no:port:here".into()]),
        with(
            "tm",
            (0..crate::tunnel::replicas::MAX_REPLICAS)
                .map(|i| format!("tm-{i}"))
                .collect(),
        ),
    ] {
        assert!(
            matches!(Entry::try_from(bad.clone()), Err(EntryError::Host(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn messages_are_bounded_by_count_and_size() {
    let many: Vec<Entry> = (0..600)
        .map(|i| node(&format!("n{i}"), 1, "", Some("10.0.0.1")))
        .collect();
    let msgs = messages("b", &many);
    assert_eq!(msgs.len(), 3);
    assert!(msgs.iter().all(|m| m.replica == "b"));
    assert_eq!(msgs.iter().map(|m| m.entries.len()).sum::<usize>(), 600);
    let big: Vec<Entry> = (0..5)
        .map(|i| node(&format!("n{i}"), 1, "", Some(&"h".repeat(200 * 1024))))
        .collect();
    assert_eq!(messages("", &big).len(), 3);
    assert!(messages("", &[]).is_empty());
}
