use std::sync::Arc;

use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().expect("tempdir");
    let s = Store::open(&d.path().join("store.redb")).expect("open");
    (d, s)
}

fn record_event(kind: &str, org: &str, name: &str, byte: u8) -> AuditEvent {
    AuditEvent {
        kind: kind.to_owned(),
        org: org.to_owned(),
        subject: name.to_owned(),
        signer: org.to_owned(),
        record_hash: [byte; 32],
        record_key: Some(format!("{kind}/{org}/{name}")),
    }
}

#[test]
fn records_and_their_entries_are_written_together_and_chained() {
    let (_d, s) = store();
    s.put_records(
        &[("node/org1/a".to_owned(), Arc::new(b"1".to_vec()))],
        &[record_event("node", "org1", "a", 1)],
    )
    .expect("put");
    s.replace_records(
        &[("node/org2/b".to_owned(), Arc::new(b"2".to_vec()))],
        &["node/org1/a".to_owned()],
        &[record_event("node", "org2", "b", 2)],
    )
    .expect("replace");
    s.append_audit(&[AuditEvent::local("chain.raft_add", "org1", "n1", "3")])
        .expect("local");
    let all = s.audit_all().expect("read");
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].1.prev_hash, GENESIS);
    assert_eq!(all[1].1.prev_hash, all[0].1.hash);
    assert_eq!(all[2].1.prev_hash, all[1].1.hash);
    assert_eq!(all[2].1.signer, LOCAL);
    assert!(!all[2].1.is_record());
    assert_eq!(verify_chain(all.iter().map(|(k, e)| (*k, e))), Ok(3));
}

#[test]
fn an_invite_and_its_use_are_audited_in_their_own_transactions() {
    let (_d, s) = store();
    let invite = crate::store::Invite {
        org: "org2".into(),
        verifier_key: crate::store::encode_key(&[7; 32]),
        expires_unix: u64::MAX,
        uses_left: 1,
        created_unix: 0,
    };
    s.put_invite("tok1", &invite).expect("invite");
    let out = s
        .redeem(
            "tok1",
            "org2",
            std::time::SystemTime::now(),
            |_| true,
            || None::<()>,
            || {
                Some(crate::store::Admission {
                    member: crate::store::Member {
                        org: "org2".into(),
                        org_ca_pem: String::new(),
                        site: "dc1".into(),
                        advertise: vec![],
                        admitted_unix: 0,
                    },
                    records: vec![("member/org2/".into(), b"m".to_vec())],
                    audit: vec![record_event("member", "org2", "", 9)],
                    out: (),
                })
            },
        )
        .expect("redeem");
    assert!(matches!(out, crate::store::Redeemed::Admitted(())));
    let kinds: Vec<_> = audit_entries(&s, &AuditFilter::default())
        .expect("entries")
        .into_iter()
        .map(|e| (e.kind, e.org, e.subject))
        .collect();
    // newest first
    assert_eq!(
        kinds,
        vec![
            ("member".into(), "org2".into(), String::new()),
            ("invite.used".into(), "org2".into(), "tok1".into()),
            ("invite.created".into(), "org2".into(), "tok1".into()),
        ]
    );
}

#[test]
fn filters_select_by_org_kind_prefix_time_and_limit() {
    let (_d, s) = store();
    s.append_audit(&[
        record_event("node", "org1", "a", 1),
        record_event("gateway", "org2", "dc1", 2),
        AuditEvent::local("chain.raft_add", "org1", "a", ""),
        AuditEvent::local("chain.add_peer", "org2", "b", ""),
    ])
    .expect("append");
    let pick = |f: AuditFilter| -> Vec<u64> {
        audit_entries(&s, &f)
            .expect("entries")
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(pick(AuditFilter::default()), vec![4, 3, 2, 1]);
    assert_eq!(
        pick(AuditFilter {
            org: Some("org1".into()),
            ..Default::default()
        }),
        vec![3, 1]
    );
    assert_eq!(
        pick(AuditFilter {
            kind: Some("chain.".into()),
            ..Default::default()
        }),
        vec![4, 3]
    );
    assert_eq!(
        pick(AuditFilter {
            kind: Some("node".into()),
            ..Default::default()
        }),
        vec![1]
    );
    assert_eq!(
        pick(AuditFilter {
            limit: Some(2),
            ..Default::default()
        }),
        vec![4, 3]
    );
    assert_eq!(
        pick(AuditFilter {
            since_ms: Some(u64::MAX),
            ..Default::default()
        }),
        Vec::<u64>::new()
    );
}

#[test]
fn verify_names_an_altered_entry_and_a_removed_one() {
    let (_d, s) = store();
    s.append_audit(&[
        record_event("node", "org1", "a", 1),
        record_event("node", "org1", "b", 2),
        record_event("node", "org1", "c", 3),
    ])
    .expect("append");
    let all = s.audit_all().expect("read");

    let mut altered = all[1].1.clone();
    altered.org = "org9".into();
    s.overwrite_audit(2, &altered).expect("tamper");
    let e = verify_chain(s.audit_all().expect("read").iter().map(|(k, e)| (*k, e)))
        .expect_err("tampered");
    assert_eq!(e, ChainError::Altered { seq: 2 });
    assert!(e.to_string().contains("audit entry 2 was altered"), "{e}");

    // a re-hashed forgery still breaks the link to the next entry
    altered.hash = entry_hash(&altered);
    s.overwrite_audit(2, &altered).expect("forge");
    let mut forged = s.audit_all().expect("read");
    assert_eq!(
        verify_chain(forged.iter().map(|(k, e)| (*k, e))),
        Err(ChainError::Broken { seq: 3, prev: 2 })
    );

    // dropping an entry is found too
    forged.remove(1);
    assert_eq!(
        verify_chain(forged.iter().map(|(k, e)| (*k, e))),
        Err(ChainError::Broken { seq: 3, prev: 1 })
    );
}

#[test]
fn the_records_digest_ignores_order_and_names_the_differences() {
    let recs = |v: &[(&str, &[u8])]| -> Vec<(String, Vec<u8>)> {
        v.iter()
            .map(|(k, b)| ((*k).to_owned(), b.to_vec()))
            .collect()
    };
    let a = RecordsDigest::of(&recs(&[("node/org1/a", b"1"), ("node/org2/b", b"2")]));
    let b = RecordsDigest::of(&recs(&[("node/org2/b", b"2"), ("node/org1/a", b"1")]));
    assert_eq!(a, b);
    assert!(a.differences(&b).is_empty());
    let c = RecordsDigest::of(&recs(&[("node/org2/b", b"3"), ("node/org3/c", b"4")]));
    assert_ne!(a.digest, c.digest);
    let diff = a.differences(&c);
    let keys: Vec<_> = diff
        .iter()
        .map(|d| (d.key.as_str(), d.ours.is_some(), d.theirs.is_some()))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("node/org1/a", true, false),
            ("node/org2/b", true, true),
            ("node/org3/c", false, true)
        ]
    );
}

#[test]
fn a_rebuild_keeps_the_trail_and_accounts_for_records_it_lacks() {
    let d = tempfile::tempdir().expect("tempdir");
    let old = d.path().join("old.redb");
    {
        let s = Store::open(&old).expect("open");
        s.put_records(
            &[("node/org1/a".to_owned(), Arc::new(b"1".to_vec()))],
            &[AuditEvent {
                record_hash: sha2::Sha256::digest(b"1").into(),
                ..record_event("node", "org1", "a", 0)
            }],
        )
        .expect("put");
        // a record without an entry (written by a version before the trail)
        s.put_records(&[("node/org2/b".to_owned(), Arc::new(b"2".to_vec()))], &[])
            .expect("put");
    }
    let salvaged = crate::store::salvage(&old);
    let kept = salvaged.audit.clone().expect("trail read");
    let fresh = Store::open(&d.path().join("new.redb")).expect("open");
    fresh.restore(&salvaged).expect("restore");
    let all = fresh.audit_all().expect("read");
    assert_eq!(all[..1], kept[..]);
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].1.kind, "restored");
    assert_eq!(all[1].1.record_key.as_deref(), Some("node/org2/b"));
    assert_eq!(verify_chain(all.iter().map(|(k, e)| (*k, e))), Ok(2));
}

#[test]
fn a_store_from_before_the_trail_gets_an_entry_per_record_at_open() {
    let d = tempfile::tempdir().expect("tempdir");
    let path = d.path().join("store.redb");
    {
        let s = Store::open(&path).expect("open");
        // as an earlier version wrote it: records, no trail
        let tx = s.db.begin_write().expect("tx");
        tx.open_table(crate::store::RECORDS)
            .expect("table")
            .insert("node/org1/a", b"1".as_slice())
            .expect("insert");
        tx.commit().expect("commit");
    }
    let s = Store::open(&path).expect("reopen");
    let all = s.audit_all().expect("read");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].1.kind, "restored");
    assert_eq!(all[0].1.record_hash, hex(&sha2::Sha256::digest(b"1")));
    drop(s);
    // only once
    let s = Store::open(&path).expect("reopen");
    assert_eq!(s.audit_all().expect("read").len(), 1);
}
