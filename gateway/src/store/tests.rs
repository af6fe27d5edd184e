use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store.redb")).expect("open");
    (dir, store)
}

fn invite(org: &str, uses: u32, expires_unix: u64) -> Invite {
    Invite {
        org: org.into(),
        verifier_key: encode_key(&[9; 32]),
        expires_unix,
        uses_left: uses,
        created_unix: 0,
    }
}

fn member(org: &str) -> Member {
    Member {
        org: org.into(),
        org_ca_pem: String::new(),
        site: "dc1".into(),
        advertise: vec![],
        admitted_unix: 0,
    }
}

fn admission(org: &str) -> Admission<u32> {
    Admission {
        member: member(org),
        records: vec![(format!("member/{org}/"), b"envelope".to_vec())],
        audit: vec![],
        out: 7,
    }
}

fn redeem(store: &Store, id: &str, org: &str, now: u64, proof_ok: bool) -> Result<u32, Refusal> {
    let now = UNIX_EPOCH + Duration::from_secs(now);
    let outcome = store
        .redeem(
            id,
            org,
            now,
            |k| proof_ok && *k == [9; 32],
            || None::<()>,
            || Some(admission(org)),
        )
        .expect("store works");
    match outcome {
        Redeemed::Admitted(v) => Ok(v),
        Redeemed::Pending(()) => panic!("no policy here"),
        Redeemed::Refused(r) => Err(r),
    }
}

#[test]
fn refusals_in_order_and_nothing_changes() {
    let (_d, s) = store();
    s.put_invite("a", &invite("org2", 1, 100)).expect("put");
    assert_eq!(
        redeem(&s, "nope", "org2", 50, true),
        Err(Refusal::UnknownToken)
    );
    assert_eq!(redeem(&s, "a", "org2", 500, false), Err(Refusal::BadProof));
    assert_eq!(redeem(&s, "a", "org2", 100, true), Err(Refusal::Expired));
    assert_eq!(redeem(&s, "a", "org3", 50, true), Err(Refusal::WrongOrg));
    assert_eq!(s.invite("a").expect("read").expect("kept").uses_left, 1);
    assert!(s.members().expect("members").is_empty());
    assert!(s.records().expect("records").is_empty());
    assert_eq!(redeem(&s, "a", "org2", 50, true), Ok(7));
    assert_eq!(redeem(&s, "a", "org2", 50, true), Err(Refusal::Used));
    assert_eq!(s.members().expect("members"), vec![member("org2")]);
    assert_eq!(
        s.records().expect("records"),
        vec![("member/org2/".to_owned(), b"envelope".to_vec())]
    );
}

#[test]
fn already_member_failed_signing_and_pending_consume_nothing() {
    let (_d, s) = store();
    s.put_member(&member("org2")).expect("member");
    s.put_invite("a", &invite("org2", 1, 100)).expect("put");
    assert_eq!(
        redeem(&s, "a", "org2", 50, true),
        Err(Refusal::AlreadyMember)
    );
    s.put_invite("b", &invite("org3", 1, 100)).expect("put");
    let r = s
        .redeem(
            "b",
            "org3",
            UNIX_EPOCH,
            |_| true,
            || None::<()>,
            || None::<Admission<()>>,
        )
        .expect("store works");
    assert!(matches!(r, Redeemed::Refused(Refusal::BadRequest)));
    assert_eq!(s.invite("b").expect("read").expect("kept").uses_left, 1);
    let r = s
        .redeem(
            "b",
            "org3",
            UNIX_EPOCH,
            |_| true,
            || Some("1 of 2"),
            || Some(admission("org3")),
        )
        .expect("store works");
    assert!(matches!(r, Redeemed::Pending("1 of 2")));
    assert_eq!(s.invite("b").expect("read").expect("kept").uses_left, 1);
    assert!(s.records().expect("records").is_empty());
}

#[test]
fn concurrent_redemptions_of_a_single_use_token_admit_one() {
    let (_d, s) = store();
    s.put_invite("a", &invite("org2", 1, u64::MAX))
        .expect("put");
    let s = std::sync::Arc::new(s);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || redeem(&s, "a", "org2", 1, true))
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    // redb serialises the write transactions: every loser sees the spent token
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(7) | Err(Refusal::Used))),
        "{results:?}"
    );
}

#[test]
fn survives_reopen_and_is_exclusive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    {
        let s = Store::open(&path).expect("open");
        s.put_invite("a", &invite("org2", 2, 100)).expect("put");
        assert!(matches!(Store::open(&path), Err(StoreError::Locked)));
    }
    let s = Store::open(&path).expect("reopen");
    assert_eq!(s.invite("a").expect("read"), Some(invite("org2", 2, 100)));
}

#[test]
fn records_and_local_nodes_round_trip() {
    let (_d, s) = store();
    let recs = vec![
        ("node/org1/a".to_owned(), Arc::new(b"1".to_vec())),
        ("node/org1/b".to_owned(), Arc::new(b"2".to_vec())),
    ];
    s.put_records(&recs, &[]).expect("put");
    s.put_records(&[("node/org1/a".to_owned(), Arc::new(b"3".to_vec()))], &[])
        .expect("overwrite");
    assert_eq!(
        s.records().expect("read"),
        vec![
            ("node/org1/a".to_owned(), b"3".to_vec()),
            ("node/org1/b".to_owned(), b"2".to_vec())
        ]
    );
    s.put_local_node("node1", "10.0.0.1").expect("put");
    s.put_local_node("node2", "node2.svc").expect("put");
    s.remove_local_node("node1").expect("rm");
    let local: Vec<_> = s.local_nodes().expect("read").into_iter().collect();
    assert_eq!(local, vec![("node2".to_owned(), "node2.svc".to_owned())]);
}

#[test]
fn service_addresses_are_set_cleared_and_pruned() {
    let (_dir, store) = store();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
    store
        .set_service_address("org2/a", Some(ip("10.96.0.1")), |_| true)
        .expect("set a");
    store
        .set_service_address("org2/b", Some(ip("10.96.0.2")), |_| true)
        .expect("set b");
    assert_eq!(store.service_addresses().expect("read").len(), 2);
    // org2/a left the view: the next write forgets it
    store
        .set_service_address("org2/b", Some(ip("fd00::2")), |k| k != "org2/a")
        .expect("update b");
    let held = store.service_addresses().expect("read");
    assert_eq!(held.keys().collect::<Vec<_>>(), ["org2/b"]);
    assert_eq!(held["org2/b"], ip("fd00::2"));
    store
        .set_service_address("org2/b", None, |_| true)
        .expect("clear");
    assert!(store.service_addresses().expect("read").is_empty());
}

/// A store with some of every kind of entry, closed; returns its path.
fn filled(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("store.redb");
    let s = Store::open(&path).expect("open");
    for i in 0..300u32 {
        s.put_records(
            &[(
                format!("node/org1/n{i}"),
                Arc::new(vec![u8::try_from(i % 251).expect("small"); 300]),
            )],
            &[],
        )
        .expect("put");
    }
    s.put_local_node("n1", "10.0.0.1").expect("local");
    s.put_local_nodes(&[crate::store::LocalNode {
        name: "tm2".into(),
        host: "10.0.0.2".into(),
        replicas: vec!["10.0.0.3".into()],
        tessera_url: None,
        rpc_url: None,
    }])
    .expect("replicas");
    s.put_local_url("n1", Some("http://10.0.0.1:9000"))
        .expect("url");
    s.put_local_rpc("n1", Some("http://10.0.0.1:8545/"))
        .expect("rpc");
    s.put_invite("id1", &invite("org2", 1, 99)).expect("invite");
    let mut a = crate::addressing::Allocations::default();
    let (change, _) = a.sync_change(
        &crate::addressing::AddressMode::default(),
        &[need("org2/a")],
    );
    s.write_allocations(&change).expect("allocations");
    path
}

/// Damage as found on real disks: the file cut to its first 4 KiB, and bytes flipped in every
/// 4 KiB page (at two offsets). redb panics on the first and on some flips; `open` reports
/// each as a damaged store naming the file, and never panics.
#[test]
fn a_damaged_file_is_an_error_naming_it_never_a_panic() {
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 3] = [
        ("truncated to 4 KiB", |b| b.truncate(4096)),
        ("a byte flipped at offset 100 of every page", |b| {
            for p in (100..b.len()).step_by(4096) {
                b[p] ^= 0xff;
            }
        }),
        (
            "bytes flipped at offsets 7, 500 and 3000 of every page",
            |b| {
                for p in (0..b.len()).step_by(4096) {
                    for i in [p + 7, p + 500, p + 3000] {
                        if let Some(x) = b.get_mut(i) {
                            *x ^= 0xa5;
                        }
                    }
                }
            },
        ),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = filled(dir.path());
        let mut bytes = std::fs::read(&path).expect("read");
        damage(&mut bytes);
        std::fs::write(&path, &bytes).expect("write");
        match Store::open(&path) {
            Err(StoreError::Damaged { path: p, reason }) => {
                assert_eq!(p, path, "{what}");
                assert!(!reason.is_empty(), "{what}");
                let shown = StoreError::Damaged { path: p, reason }.to_string();
                assert!(shown.contains("store.redb is damaged"), "{what}: {shown}");
            }
            other => panic!("{what}: {other:?}"),
        }
        // what still reads can be salvaged, and salvaging never panics either
        let _ = salvage(&path);
    }
}

#[test]
fn salvage_of_a_healthy_file_reads_every_table_and_restores_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = filled(dir.path());
    let s = salvage(&path);
    assert_eq!(s.records.as_ref().map(Vec::len), Some(300));
    assert_eq!(
        s.local_nodes.as_ref().map(|m| m["n1"].as_str()),
        Some("10.0.0.1")
    );
    assert_eq!(s.invites.as_ref().map(Vec::len), Some(1));
    assert_eq!(s.allocations.as_ref().map(|a| a.nodes.len()), Some(1));
    assert!(s.members.is_some() && s.service_addresses.is_some());
    let fresh = Store::open(&dir.path().join("fresh.redb")).expect("open");
    fresh.restore(&s).expect("restore");
    assert_eq!(fresh.records().expect("records").len(), 300);
    assert_eq!(
        fresh.local_urls().expect("urls")["n1"],
        "http://10.0.0.1:9000"
    );
    assert_eq!(
        fresh.local_rpc().expect("rpc")["n1"],
        "http://10.0.0.1:8545/"
    );
    assert_eq!(
        fresh.invite("id1").expect("read"),
        Some(invite("org2", 1, 99))
    );
    assert_eq!(Some(fresh.allocations().expect("read")), s.allocations);
    assert_eq!(
        fresh.local_replicas().expect("replicas")["tm2"],
        ["10.0.0.3"],
        "a node's replica hosts survive a rebuild"
    );
    // a file that does not open at all salvages nothing, without a panic
    std::fs::write(
        dir.path().join("cut.redb"),
        &std::fs::read(&path).expect("read")[..4096],
    )
    .expect("write");
    let none = salvage(&dir.path().join("cut.redb"));
    assert!(none.records.is_none() && none.local_nodes.is_none());
}

#[test]
fn a_store_file_the_store_creates_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    drop(Store::open(&path).expect("open"));
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "redb alone creates it 0666 less the umask");
}

/// A node's RPC endpoint is replaced by a new registration, dropped by one without it and
/// forgotten with the node.
#[test]
fn local_rpc_follows_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(&dir.path().join("s.redb")).expect("open");
    s.put_local_node("n1", "10.0.0.1").expect("local");
    s.put_local_rpc("n1", Some("http://10.0.0.1:8545/"))
        .expect("rpc");
    s.put_local_rpc("n1", Some("http://10.0.0.1:8546/"))
        .expect("rpc");
    assert_eq!(s.local_rpc().expect("rpc")["n1"], "http://10.0.0.1:8546/");
    s.put_local_rpc("n1", None).expect("rpc");
    assert!(s.local_rpc().expect("rpc").is_empty());
    s.put_local_rpc("n1", Some("http://10.0.0.1:8545/"))
        .expect("rpc");
    s.remove_local_node("n1").expect("remove");
    assert!(s.local_rpc().expect("rpc").is_empty());
}

fn need(node: &str) -> crate::addressing::Need {
    crate::addressing::Need {
        node: node.to_owned(),
        ports: [("p2p".to_owned(), 30303), ("raft".to_owned(), 50400)].into(),
    }
}

/// The rows of the `allocations` table and whether `META` still holds the old single value.
fn allocation_rows(s: &Store) -> (u64, bool) {
    let tx = s.db.begin_read().expect("read");
    let rows =
        redb::ReadableTableMetadata::len(&tx.open_table(ALLOCATIONS).expect("table")).expect("len");
    let legacy = tx
        .open_table(META)
        .expect("meta")
        .get(LEGACY_ALLOCATIONS)
        .expect("get")
        .is_some();
    (rows, legacy)
}

/// Writes `a` as stores before the `allocations` table did: one JSON value in `META`.
fn put_legacy_allocations(s: &Store, a: &crate::addressing::Allocations) {
    let tx = s.db.begin_write().expect("write");
    tx.open_table(META)
        .expect("meta")
        .insert(LEGACY_ALLOCATIONS, encode(a).as_slice())
        .expect("insert");
    tx.commit().expect("commit");
}

/// A store written before the `allocations` table (every allocation one JSON value in `meta`)
/// opens with the same allocations, now one row per node, and the old value gone; a salvage
/// of such a file reads them too, and a restore writes them as rows.
#[test]
fn allocations_of_an_old_store_move_into_rows_at_open() {
    let mode = crate::addressing::AddressMode::default();
    let mut old = crate::addressing::Allocations::default();
    let needs: Vec<_> = ["org2/a", "org2/b", "org2/c"].map(need).into();
    assert!(old.sync(&mode, &needs).is_empty());
    assert!(old.sync(&mode, &needs[1..]).is_empty(), "org2/a freed");
    assert_eq!(old.freed.len(), 1);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    {
        let s = Store::open(&path).expect("open");
        put_legacy_allocations(&s, &old);
        assert_eq!(allocation_rows(&s), (0, true));
    }
    // salvage reads an old file as it is (no migration on a file being rescued)
    let copy = dir.path().join("copy.redb");
    std::fs::copy(&path, &copy).expect("copy");
    let saved = salvage(&copy);
    assert_eq!(saved.allocations.as_ref(), Some(&old));

    let s = Store::open(&path).expect("open migrates");
    assert_eq!(
        allocation_rows(&s),
        (2, false),
        "one row per node, old value gone"
    );
    assert_eq!(s.allocations().expect("read"), old);
    drop(s);
    let s = Store::open(&path).expect("open again: nothing left to move");
    assert_eq!(s.allocations().expect("read"), old);

    let fresh = Store::open(&dir.path().join("fresh.redb")).expect("open");
    fresh.restore(&saved).expect("restore");
    assert_eq!(allocation_rows(&fresh), (2, false));
    assert_eq!(fresh.allocations().expect("read"), old);
}

/// An old single value that does not decode keeps the store from opening (named as
/// damaged) rather than being dropped.
#[test]
fn an_old_allocations_value_that_does_not_decode_is_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    {
        let s = Store::open(&path).expect("open");
        let tx = s.db.begin_write().expect("write");
        tx.open_table(META)
            .expect("meta")
            .insert(LEGACY_ALLOCATIONS, b"{not json".as_slice())
            .expect("insert");
        tx.commit().expect("commit");
    }
    match Store::open(&path) {
        Err(StoreError::Damaged { reason, .. }) => {
            assert!(reason.contains("allocations"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// With 3,000 remote nodes allocated, one more node writes one row, a removed one its row
/// and the freed values; what the store reads back is the allocator's state each time.
#[test]
fn a_change_of_one_node_writes_its_row_only() {
    let (_dir, s) = store();
    let mode = crate::addressing::AddressMode::default();
    let mut a = crate::addressing::Allocations::default();
    let mut needs: Vec<_> = (0..3000).map(|i| need(&format!("org2/n{i}"))).collect();
    let (change, failed) = a.sync_change(&mode, &needs);
    assert!(failed.is_empty());
    assert_eq!(s.write_allocations(&change).expect("write"), 3000);
    assert_eq!(allocation_rows(&s), (3000, false));

    let more = need("org2/more");
    let (change, _) = a.update_change(&mode, std::slice::from_ref(&more), &[]);
    assert_eq!(change.set.len(), 1);
    assert_eq!(s.write_allocations(&change).expect("write"), 1);
    assert_eq!(s.allocations().expect("read"), a);

    // the same node again (a new seq of its record, same ports): nothing to write
    let (change, _) = a.update_change(&mode, std::slice::from_ref(&more), &[]);
    assert!(change.is_empty());
    assert_eq!(s.write_allocations(&change).expect("write"), 0);

    let (change, _) = a.update_change(&mode, &[], &["org2/n7".to_owned()]);
    assert_eq!(
        (change.removed.len(), change.freed.is_some()),
        (1, true),
        "the node's row and the freed values"
    );
    assert_eq!(s.write_allocations(&change).expect("write"), 2);
    assert_eq!(s.allocations().expect("read"), a);
    assert_eq!(allocation_rows(&s), (3000, false));

    // a full pass that changes nothing writes nothing
    needs.retain(|n| n.node != "org2/n7");
    needs.push(more);
    let (change, _) = a.sync_change(&mode, &needs);
    assert!(change.is_empty(), "{change:?}");
}
