//! A consistent copy of the whole store, for `fedgw backup` and `fedgw restore` (docs/DESIGN.md,
//! "Backups"): every table's rows as they stood in one redb read transaction, so a copy taken
//! while the gateway writes never mixes two states. redb offers no online file copy (its
//! savepoints live inside the same file, and the running gateway holds the file lock), so the
//! running gateway reads the snapshot and streams it over its admin socket.
//!
//! The document is JSON: `{"format": 1, "tables": {"records": {"key": "value", ...}, ...}}`.
//! Values of byte tables are standard base64; values of text tables are the text itself. The
//! audit trail (`audit`, keyed by sequence number) is a byte table with decimal keys.
//! Rows are copied raw: restoring writes them back unchanged and [`Store::open`] then reads and
//! decodes every table, so a snapshot that restores is one a gateway can run on.

use std::collections::BTreeMap;

use base64::Engine as _;
use redb::{ReadableTable as _, TableDefinition, TableHandle as _};
use serde::{Deserialize, Serialize};

use super::audit::AUDIT;
use super::hosts::LOCAL_REPLICAS;
use super::shared::SITE_SHARED;
use super::{
    ALLOCATIONS, INVITES, LOCAL_NODES, LOCAL_RPC, LOCAL_URLS, MEMBERS, META, RECORDS,
    SERVICE_ADDRESSES, Store, StoreError,
};

/// The snapshot document's format version; [`Store::load_snapshot`] refuses any other.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// The largest snapshot document `fedgw backup` accepts from a gateway and `fedgw restore`
/// reads from an archive, in bytes (256 MiB: a store of this size holds ~16,000 records of the
/// 16 KiB maximum).
pub const MAX_SNAPSHOT_BYTES: usize = 256 << 20;

/// Tables whose values are bytes.
const BYTE_TABLES: [TableDefinition<&str, &[u8]>; 5] =
    [INVITES, MEMBERS, RECORDS, META, ALLOCATIONS];
/// Tables whose values are text.
const TEXT_TABLES: [TableDefinition<&str, &str>; 6] = [
    LOCAL_NODES,
    SERVICE_ADDRESSES,
    LOCAL_URLS,
    LOCAL_RPC,
    LOCAL_REPLICAS,
    SITE_SHARED,
];

/// A byte table with its rows decoded, ready to write.
type ByteRows<'a> = (
    TableDefinition<'static, &'static str, &'static [u8]>,
    Vec<(&'a str, Vec<u8>)>,
);
/// A text table with its rows.
type TextRows<'a> = (
    TableDefinition<'static, &'static str, &'static str>,
    &'a BTreeMap<String, String>,
);

/// Every table's rows at one instant: table name → key → value (base64 for byte tables).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// [`SNAPSHOT_FORMAT`].
    pub format: u32,
    /// Table name → key → value.
    pub tables: BTreeMap<String, BTreeMap<String, String>>,
}

/// Why a snapshot could not be loaded into a store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The document is of a format this build does not know.
    #[error(
        "the store snapshot is format {0}, this fedgw reads format {SNAPSHOT_FORMAT}; restore with the fedgw version that wrote it"
    )]
    Format(u32),
    /// The document names a table the store does not have.
    #[error(
        "the store snapshot has an unknown table {0:?}; the archive is damaged or from another program"
    )]
    UnknownTable(String),
    /// A byte table's value is not base64 (or an audit entry's key is not a sequence number).
    #[error("the store snapshot's entry {table}/{key} cannot be read; the archive is damaged")]
    Value {
        /// The table.
        table: String,
        /// The key.
        key: String,
    },
    /// The store refused the write.
    #[error("writing the snapshot into the store failed")]
    Store(#[from] StoreError),
}

impl Store {
    /// Reads every table in one read transaction (consistent while writers go on). Errors: the
    /// store could not be read.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.injected()?;
        let tx = self.db.begin_read()?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut tables = BTreeMap::new();
        for def in BYTE_TABLES {
            let mut rows = BTreeMap::new();
            for entry in tx.open_table(def)?.iter()? {
                let (k, v) = entry?;
                rows.insert(k.value().to_owned(), b64.encode(v.value()));
            }
            tables.insert(def.name().to_owned(), rows);
        }
        for def in TEXT_TABLES {
            let mut rows = BTreeMap::new();
            for entry in tx.open_table(def)?.iter()? {
                let (k, v) = entry?;
                rows.insert(k.value().to_owned(), v.value().to_owned());
            }
            tables.insert(def.name().to_owned(), rows);
        }
        let mut rows = BTreeMap::new();
        for entry in tx.open_table(AUDIT)?.iter()? {
            let (k, v) = entry?;
            rows.insert(k.value().to_string(), b64.encode(v.value()));
        }
        tables.insert(AUDIT.name().to_owned(), rows);
        Ok(Snapshot {
            format: SNAPSHOT_FORMAT,
            tables,
        })
    }

    /// Writes `snapshot`'s rows into this store in one transaction (meant for a fresh store:
    /// rows of the same key are replaced, others kept). Checks the whole document before
    /// writing anything.
    pub fn load_snapshot(&self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format(snapshot.format));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut bytes: Vec<ByteRows<'_>> = Vec::new();
        let mut text: Vec<TextRows<'_>> = Vec::new();
        let mut audit: Vec<(u64, Vec<u8>)> = Vec::new();
        for (name, rows) in &snapshot.tables {
            if name == AUDIT.name() {
                for (k, v) in rows {
                    let bad = || SnapshotError::Value {
                        table: name.clone(),
                        key: k.clone(),
                    };
                    let seq = k.parse::<u64>().map_err(|_| bad())?;
                    audit.push((seq, b64.decode(v).map_err(|_| bad())?));
                }
            } else if let Some(def) = BYTE_TABLES.into_iter().find(|d| d.name() == name) {
                let mut decoded = Vec::with_capacity(rows.len());
                for (k, v) in rows {
                    let value = b64.decode(v).map_err(|_| SnapshotError::Value {
                        table: name.clone(),
                        key: k.clone(),
                    })?;
                    decoded.push((k.as_str(), value));
                }
                bytes.push((def, decoded));
            } else if let Some(def) = TEXT_TABLES.into_iter().find(|d| d.name() == name) {
                text.push((def, rows));
            } else {
                return Err(SnapshotError::UnknownTable(name.clone()));
            }
        }
        let write = || -> Result<(), StoreError> {
            let tx = self.db.begin_write()?;
            for (def, rows) in &bytes {
                let mut table = tx.open_table(*def)?;
                for (k, v) in rows {
                    table.insert(*k, v.as_slice())?;
                }
            }
            for (def, rows) in &text {
                let mut table = tx.open_table(*def)?;
                for (k, v) in rows.iter() {
                    table.insert(k.as_str(), v.as_str())?;
                }
            }
            let mut table = tx.open_table(AUDIT)?;
            for (seq, v) in &audit {
                table.insert(*seq, v.as_slice())?;
            }
            drop(table);
            tx.commit()?;
            Ok(())
        };
        write().map_err(SnapshotError::Store)
    }
}

impl Snapshot {
    /// Rows per table: `(name, rows)` in name order (for `fedgw diagnose`'s store check).
    pub fn sizes(&self) -> Vec<(String, usize)> {
        self.tables
            .iter()
            .map(|(name, rows)| (name.clone(), rows.len()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{SNAPSHOT_FORMAT, Snapshot, SnapshotError};
    use crate::store::Store;

    #[test]
    fn a_snapshot_restores_every_table_into_a_fresh_store() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = Store::open(&tmp.path().join("a.redb")).expect("open");
        a.put_records(&[("k1".into(), std::sync::Arc::new(vec![0, 1, 255]))], &[])
            .expect("records");
        a.put_local_node("node1", "10.0.0.1").expect("local");
        a.append_audit(&[crate::store::AuditEvent::local(
            "invite.created",
            "org2",
            "0123456789abcdef",
            "",
        )])
        .expect("audit");
        let snap = a.snapshot().expect("snapshot");
        assert_eq!(
            snap.tables["audit"].len(),
            1,
            "the audit trail is in the snapshot"
        );
        assert_eq!(snap.format, SNAPSHOT_FORMAT);
        let text = serde_json::to_vec(&snap).expect("json");
        let back: Snapshot = serde_json::from_slice(&text).expect("parse");

        let b = Store::open(&tmp.path().join("b.redb")).expect("open");
        b.load_snapshot(&back).expect("load");
        assert_eq!(b.snapshot().expect("snapshot"), snap);
        assert_eq!(
            b.records().expect("records"),
            vec![("k1".to_owned(), vec![0, 1, 255])]
        );
        assert_eq!(
            b.local_nodes()
                .expect("local")
                .get("node1")
                .map(String::as_str),
            Some("10.0.0.1")
        );
    }

    #[test]
    fn a_damaged_snapshot_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&tmp.path().join("s.redb")).expect("open");
        let mut snap = s.snapshot().expect("snapshot");
        snap.tables
            .entry("records".into())
            .or_default()
            .insert("k".into(), "not base64!".into());
        assert!(matches!(
            s.load_snapshot(&snap),
            Err(SnapshotError::Value { .. })
        ));
        assert!(s.records().expect("records").is_empty());
        snap.tables.clear();
        snap.tables.insert("nonsense".into(), Default::default());
        assert!(matches!(
            s.load_snapshot(&snap),
            Err(SnapshotError::UnknownTable(_))
        ));
        snap.format = 2;
        assert!(matches!(
            s.load_snapshot(&snap),
            Err(SnapshotError::Format(2))
        ));
    }
}
