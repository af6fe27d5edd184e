//! The replica addresses of this site's nodes (never replicated): a node registered with
//! several addresses (`fedgw node add NAME --host A --host B`) keeps its first in
//! `local_nodes`, as a node with one address does, and the others here, as a JSON array of
//! strings under its name. A node with one address has no row, so stores written before this
//! table need no migration: the table is created empty at open.

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use super::{Store, StoreError, decode};

/// Node name → JSON array of its replica hosts (after the one in `local_nodes`).
pub(super) const LOCAL_REPLICAS: TableDefinition<&str, &str> =
    TableDefinition::new("local_replicas");

/// Sets `name`'s replica hosts in `tx` (none: removes its row).
pub(super) fn put(
    tx: &WriteTransaction,
    name: &str,
    replicas: &[String],
) -> Result<(), StoreError> {
    let mut table = tx.open_table(LOCAL_REPLICAS)?;
    if replicas.is_empty() {
        table.remove(name)?;
    } else {
        // a Vec<String> always encodes
        let json = serde_json::to_string(replicas).unwrap_or_default();
        table.insert(name, json.as_str())?;
    }
    Ok(())
}

/// `names`' replica hosts in `tx`; a node without replicas is left out.
pub(super) fn get(
    tx: &ReadTransaction,
    names: &[String],
) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
    let table = tx.open_table(LOCAL_REPLICAS)?;
    let mut out = BTreeMap::new();
    for name in names {
        if let Some(v) = table.get(name.as_str())? {
            out.insert(name.clone(), decode(name, v.value().as_bytes())?);
        }
    }
    Ok(out)
}

impl Store {
    /// Every node's replica hosts: name → its addresses after the first (nodes with one
    /// address are left out). Errors: [`StoreError::Corrupt`] for a row that is not a JSON
    /// array of strings.
    pub fn local_replicas(&self) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
        self.injected()?;
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LOCAL_REPLICAS)?;
        let mut out = BTreeMap::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let name = k.value().to_owned();
            let hosts = decode(&name, v.value().as_bytes())?;
            out.insert(name, hosts);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{LocalNode, Store};

    fn node(name: &str, host: &str, replicas: &[&str]) -> LocalNode {
        LocalNode {
            name: name.into(),
            host: host.into(),
            replicas: replicas.iter().map(|s| (*s).to_owned()).collect(),
            tessera_url: None,
            rpc_url: None,
        }
    }

    #[test]
    fn replica_hosts_are_kept_beside_the_first_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        {
            let store = Store::open(&path).expect("open");
            store
                .put_local_nodes(&[
                    node("tm", "tessera-1", &["tessera-2", "10.0.0.9"]),
                    node("n1", "10.0.0.5", &[]),
                ])
                .expect("put");
        }
        let store = Store::open(&path).expect("reopen");
        let hosts = store.local_nodes().expect("hosts");
        assert_eq!(hosts.get("tm").map(String::as_str), Some("tessera-1"));
        let replicas = store.local_replicas().expect("replicas");
        assert_eq!(
            replicas.get("tm"),
            Some(&vec!["tessera-2".to_owned(), "10.0.0.9".to_owned()])
        );
        assert!(!replicas.contains_key("n1"));
        let some = store
            .site_entries(&["tm".to_owned(), "n1".to_owned()], &[])
            .expect("entries");
        assert_eq!(some.replicas, replicas);
        // registered again with one address: the replicas are gone
        store
            .put_local_nodes(&[node("tm", "tessera-1", &[])])
            .expect("put");
        assert!(store.local_replicas().expect("replicas").is_empty());
        store
            .put_local_nodes(&[node("tm", "tessera-1", &["tessera-2"])])
            .expect("put");
        store.remove_local_node("tm").expect("remove");
        assert!(store.local_replicas().expect("replicas").is_empty());
    }
}
