//! `fedgw store rebuild`: [`salvage`] reads what still reads from a damaged store file, table
//! by table, and [`Store::restore`] writes it into a fresh one.

use std::path::Path;

use redb::ReadableTable as _;

use super::{
    ALLOCATIONS, AuditEntry, FREED, INVITES, Invite, LOCAL_NODES, LOCAL_RPC, LOCAL_URLS, MEMBERS,
    META, Member, RECORDS, SERVICE_ADDRESSES, Store, StoreError, audit, decode, encode, quietly,
};

/// What [`salvage`] could read from a damaged store, table by table (`None`: the table could
/// not be read, or the file not opened at all).
#[derive(Debug, Default)]
pub struct Salvage {
    /// Signed membership records (re-verified when a gateway loads them).
    pub records: Option<Vec<(String, Vec<u8>)>>,
    /// This site's nodes' real addresses.
    pub local_nodes: Option<std::collections::BTreeMap<String, String>>,
    /// This site's nodes' registered Tessera URLs.
    pub local_urls: Option<std::collections::BTreeMap<String, String>>,
    /// This site's nodes' JSON-RPC endpoints.
    pub local_rpc: Option<std::collections::BTreeMap<String, String>>,
    /// Remote nodes' Service addresses (Kubernetes).
    pub service_addresses: Option<std::collections::BTreeMap<String, std::net::IpAddr>>,
    /// Remote nodes' local addresses.
    pub allocations: Option<crate::addressing::Allocations>,
    /// Open invites by id.
    pub invites: Option<Vec<(String, Invite)>>,
    /// The admissions ledger.
    pub members: Option<Vec<Member>>,
    /// The audit trail, oldest first.
    pub audit: Option<Vec<(u64, AuditEntry)>>,
    /// This site's nodes' replica hosts (after the first, in `local_nodes`).
    pub local_replicas: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// Reads whatever still reads from the store file at `path`, each table on its own, catching
/// redb's errors and panics. The file may be repaired in place by redb while opening: pass a
/// copy when the original must stay as it was.
pub fn salvage(path: &Path) -> Salvage {
    let Ok(Ok(store)) = quietly(|| Store::open_db(path)) else {
        return Salvage::default();
    };
    fn table<T>(store: &Store, read: fn(&Store) -> Result<T, StoreError>) -> Option<T> {
        quietly(|| read(store)).ok()?.ok()
    }
    Salvage {
        records: table(&store, Store::records),
        local_nodes: table(&store, Store::local_nodes),
        local_urls: table(&store, Store::local_urls),
        local_rpc: table(&store, Store::local_rpc),
        service_addresses: table(&store, Store::service_addresses),
        allocations: table(&store, Store::allocations),
        invites: table(&store, Store::invites),
        members: table(&store, Store::members),
        audit: table(&store, Store::audit_all),
        local_replicas: table(&store, Store::local_replicas),
    }
}

impl Store {
    /// Every stored invite: (id, invite), sorted by id.
    pub fn invites(&self) -> Result<Vec<(String, Invite)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(INVITES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_owned(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// Writes what [`salvage`] recovered into this (fresh) store, in one transaction.
    pub fn restore(&self, s: &Salvage) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut records = tx.open_table(RECORDS)?;
            for (k, v) in s.records.iter().flatten() {
                records.insert(k.as_str(), v.as_slice())?;
            }
            let mut local = tx.open_table(LOCAL_NODES)?;
            for (k, v) in s.local_nodes.iter().flatten() {
                local.insert(k.as_str(), v.as_str())?;
            }
            let mut urls = tx.open_table(LOCAL_URLS)?;
            for (k, v) in s.local_urls.iter().flatten() {
                urls.insert(k.as_str(), v.as_str())?;
            }
            let mut rpc = tx.open_table(LOCAL_RPC)?;
            for (k, v) in s.local_rpc.iter().flatten() {
                rpc.insert(k.as_str(), v.as_str())?;
            }
            let mut services = tx.open_table(SERVICE_ADDRESSES)?;
            for (k, v) in s.service_addresses.iter().flatten() {
                services.insert(k.as_str(), v.to_string().as_str())?;
            }
            if let Some(a) = &s.allocations {
                let mut rows = tx.open_table(ALLOCATIONS)?;
                for (k, v) in &a.nodes {
                    rows.insert(k.as_str(), encode(v).as_slice())?;
                }
                tx.open_table(META)?
                    .insert(FREED, encode(&a.freed).as_slice())?;
            }
            let mut invites = tx.open_table(INVITES)?;
            for (k, v) in s.invites.iter().flatten() {
                invites.insert(k.as_str(), encode(v).as_slice())?;
            }
            let mut members = tx.open_table(MEMBERS)?;
            for m in s.members.iter().flatten() {
                members.insert(m.org.as_str(), encode(m).as_slice())?;
            }
        }
        for (name, hosts) in s.local_replicas.iter().flatten() {
            super::hosts::put(&tx, name, hosts)?;
        }
        audit::restore(&tx, s)?;
        tx.commit()?;
        Ok(())
    }
}
