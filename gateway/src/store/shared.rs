//! The site state replicas share ([`crate::site::shared`]), as the store keeps it: table
//! `site_shared` holds every entry (key `node/<name>` or `alloc/<org>/<name>` → JSON
//! [`Row`]: version, writer, value; tombstones included), the tables readers use
//! (`local_nodes`, `local_urls`, `local_rpc`, `local_replicas`, `allocations`) hold what the
//! entries make of them. Every local write of those tables stamps its entries in the same
//! transaction ([`stamp_node`], [`stamp_allocation`]) and returns them for the siblings;
//! [`Store::apply_shared`] merges a sibling's entries in one transaction.

use std::collections::BTreeSet;

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{
    ALLOCATIONS, LOCAL_NODES, LOCAL_RPC, LOCAL_URLS, Store, StoreError, decode, encode, hosts,
};
use crate::addressing::{AddressMode, LocalAddress};
use crate::site::shared::{self, Entry, Registration, Row, SharedKey, Value};

/// Shared entry key → JSON [`Row`].
pub(super) const SITE_SHARED: TableDefinition<&str, &str> = TableDefinition::new("site_shared");

/// The current time in Unix ms (the hybrid clock's wall part).
pub(super) fn now_ms() -> u64 {
    super::audit::now_ms()
}

/// What [`Store::apply_shared`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The entries that replaced what was held.
    pub taken: usize,
    /// A node registration changed.
    pub nodes: bool,
    /// The served allocations (table `allocations`) changed.
    pub allocations: bool,
    /// Allocation conflicts the entries brought (a partition's two sides allocated): one line
    /// each, naming the node and the winner.
    pub conflicts: Vec<String>,
}

/// The row under `key` in `tx`, if any.
fn held(tx: &WriteTransaction, key: &SharedKey) -> Result<Option<Entry>, StoreError> {
    let table = tx.open_table(SITE_SHARED)?;
    let text = key.to_string();
    let row = table.get(text.as_str())?;
    row.map(|v| {
        decode::<Row>(&text, v.value().as_bytes()).map(|row| Entry::from_row(key.clone(), row))
    })
    .transpose()
}

/// Writes `entry` as the row of its key.
fn put_row(tx: &WriteTransaction, entry: &Entry) -> Result<(), StoreError> {
    let json = String::from_utf8(encode(&entry.row())).unwrap_or_default();
    tx.open_table(SITE_SHARED)?
        .insert(entry.key.to_string().as_str(), json.as_str())?;
    Ok(())
}

/// Stamps `value` as this replica's new entry for `key` (version past the held one).
fn stamp(
    tx: &WriteTransaction,
    key: SharedKey,
    value: Option<Value>,
    replica: &str,
    now_ms: u64,
) -> Result<Entry, StoreError> {
    let version = shared::next_version(held(tx, &key)?.map(|e| e.version), now_ms);
    let entry = Entry {
        key,
        version,
        replica: replica.to_owned(),
        value,
    };
    put_row(tx, &entry)?;
    Ok(entry)
}

/// `name`'s registration as the tables hold it in `tx` (`None`: not registered).
fn registration(tx: &WriteTransaction, name: &str) -> Result<Option<Registration>, StoreError> {
    let Some(host) = tx
        .open_table(LOCAL_NODES)?
        .get(name)?
        .map(|v| v.value().to_owned())
    else {
        return Ok(None);
    };
    let replicas = match tx.open_table(hosts::LOCAL_REPLICAS)?.get(name)? {
        Some(v) => decode(name, v.value().as_bytes())?,
        None => vec![],
    };
    let url = |def: TableDefinition<&str, &str>| -> Result<Option<String>, StoreError> {
        Ok(tx.open_table(def)?.get(name)?.map(|v| v.value().to_owned()))
    };
    Ok(Some(Registration {
        host,
        replicas,
        tessera_url: url(LOCAL_URLS)?,
        rpc_url: url(LOCAL_RPC)?,
    }))
}

/// Writes `name`'s registration into the readers' tables (`None`: removes it).
fn write_registration(
    tx: &WriteTransaction,
    name: &str,
    reg: Option<&Registration>,
) -> Result<(), StoreError> {
    let mut nodes = tx.open_table(LOCAL_NODES)?;
    let mut urls = tx.open_table(LOCAL_URLS)?;
    let mut rpc = tx.open_table(LOCAL_RPC)?;
    match reg {
        Some(r) => nodes.insert(name, r.host.as_str())?,
        None => nodes.remove(name)?,
    };
    match reg.and_then(|r| r.tessera_url.as_deref()) {
        Some(u) => urls.insert(name, u)?,
        None => urls.remove(name)?,
    };
    match reg.and_then(|r| r.rpc_url.as_deref()) {
        Some(u) => rpc.insert(name, u)?,
        None => rpc.remove(name)?,
    };
    hosts::put(tx, name, reg.map_or(&[][..], |r| &r.replicas))
}

/// Stamps `name`'s registration as the tables now hold it in `tx` (a tombstone when it is not
/// registered). A name that is not a key (not a label) is not shared: `None`.
pub(super) fn stamp_node(
    tx: &WriteTransaction,
    name: &str,
    replica: &str,
) -> Result<Option<Entry>, StoreError> {
    let Ok(key) = format!("node/{name}").parse::<SharedKey>() else {
        return Ok(None);
    };
    let value = registration(tx, name)?.map(Value::Node);
    stamp(tx, key, value, replica, now_ms()).map(Some)
}

/// Stamps remote node `node`'s (`org/name`) allocation `addr` (`None`: freed).
pub(super) fn stamp_allocation(
    tx: &WriteTransaction,
    node: &str,
    addr: Option<&LocalAddress>,
    replica: &str,
) -> Result<Option<Entry>, StoreError> {
    let Ok(key) = format!("alloc/{node}").parse::<SharedKey>() else {
        return Ok(None);
    };
    let value = addr.cloned().map(Value::Allocation);
    stamp(tx, key, value, replica, now_ms()).map(Some)
}

impl Store {
    /// Sets this gateway's replica name, which stamps every shared entry it writes (empty, the
    /// default: the site's first gateway). Only the first call counts.
    pub fn set_replica(&self, name: &str) {
        let _ = self.replica.set(name.to_owned());
    }

    /// This gateway's replica name ([`Store::set_replica`]).
    pub fn replica(&self) -> &str {
        self.replica.get().map_or("", String::as_str)
    }

    /// Every shared entry, tombstones included, in key order. Errors: a row that does not
    /// decode is [`StoreError::Corrupt`]; a key that does not parse is skipped (never written).
    pub fn shared_entries(&self) -> Result<Vec<Entry>, StoreError> {
        self.injected()?;
        let tx = self.db.begin_read()?;
        let mut out = vec![];
        for row in tx.open_table(SITE_SHARED)?.iter()? {
            let (k, v) = row?;
            let Ok(key) = k.value().parse::<SharedKey>() else {
                continue;
            };
            let row: Row = decode(k.value(), v.value().as_bytes())?;
            out.push(Entry::from_row(key, row));
        }
        Ok(out)
    }

    /// Merges a sibling's entries ([`shared::merge`]) in one transaction: each one taken
    /// replaces the held row and, for a registration, the readers' rows; when an allocation
    /// changed, table `allocations` is brought in line with [`shared::effective`] (the
    /// allocator's freed list stays this gateway's own).
    pub fn apply_shared(
        &self,
        entries: &[Entry],
        mode: &AddressMode,
    ) -> Result<Applied, StoreError> {
        let mut out = Applied::default();
        let tx = self.db.begin_write()?;
        let mut allocations = BTreeSet::new();
        for e in entries {
            let held = held(&tx, &e.key)?;
            let merged = shared::merge(held.as_ref(), e, mode);
            // a held allocation that already lost its address to another node is replaced by
            // the leader's new one: no new conflict
            let lost_already = merged.take
                && match (&e.key, held.as_ref().and_then(Entry::allocation)) {
                    (SharedKey::Allocation(node), Some(addr)) => {
                        let node = node.to_string();
                        let served = tx.open_table(ALLOCATIONS)?;
                        let row = served.get(node.as_str())?;
                        let now: Option<LocalAddress> =
                            row.and_then(|v| decode(&node, v.value()).ok());
                        now.as_ref() != Some(addr)
                    }
                    _ => false,
                };
            if merged.conflict && !lost_already {
                let winner = if merged.take {
                    e
                } else {
                    held.as_ref().unwrap_or(e)
                };
                out.conflicts.push(format!(
                    "{}: two addresses after a partition; replica {:?}'s kept",
                    e.key, winner.replica
                ));
            }
            if !merged.take {
                continue;
            }
            put_row(&tx, e)?;
            out.taken += 1;
            match (&e.key, &e.value) {
                (SharedKey::Node(name), value) => {
                    let reg = match value {
                        Some(Value::Node(r)) => Some(r),
                        _ => None,
                    };
                    write_registration(&tx, name, reg)?;
                    out.nodes = true;
                }
                (SharedKey::Allocation(node), _) => {
                    allocations.insert(node.to_string());
                }
            }
        }
        if !allocations.is_empty() {
            let held: Vec<Entry> = {
                let table = tx.open_table(SITE_SHARED)?;
                let mut held = vec![];
                for row in table.range("alloc/".."alloc0")? {
                    let (k, v) = row?;
                    if let Ok(key) = k.value().parse::<SharedKey>() {
                        let row: Row = decode(k.value(), v.value().as_bytes())?;
                        held.push(Entry::from_row(key, row));
                    }
                }
                held
            };
            let (served, lost) = shared::effective(&held, mode);
            for (loser, winner) in shared::new_losses(&lost, &allocations) {
                out.conflicts.push(format!(
                    "alloc/{loser}: its address is {winner}'s (allocated on both sides of a \
                     partition); it gets another"
                ));
            }
            let mut table = tx.open_table(ALLOCATIONS)?;
            let mut stale = vec![];
            for row in table.iter()? {
                let (k, v) = row?;
                let key = k.value().to_owned();
                let now: Option<LocalAddress> = decode(&key, v.value()).ok();
                if served.get(&key) != now.as_ref() {
                    stale.push(key);
                }
            }
            for key in &stale {
                table.remove(key.as_str())?;
                out.allocations = true;
            }
            for (key, addr) in &served {
                if table.get(key.as_str())?.is_none() {
                    table.insert(key.as_str(), encode(addr).as_slice())?;
                    out.allocations = true;
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Gives every registration and allocation without a shared entry one (a store written
    /// before entries were shared, or rebuilt), stamped by this replica, and purges tombstones
    /// older than [`shared::TOMBSTONE_KEEP_MS`], in one transaction. Returns how many entries
    /// it stamped.
    pub fn adopt_shared(&self) -> Result<usize, StoreError> {
        let replica = self.replica().to_owned();
        let now = now_ms();
        let tx = self.db.begin_write()?;
        let names: Vec<String> = {
            let table = tx.open_table(LOCAL_NODES)?;
            let mut names = vec![];
            for row in table.iter()? {
                names.push(row?.0.value().to_owned());
            }
            names
        };
        let nodes: Vec<String> = {
            let table = tx.open_table(ALLOCATIONS)?;
            let mut nodes = vec![];
            for row in table.iter()? {
                nodes.push(row?.0.value().to_owned());
            }
            nodes
        };
        let (has, expired) = {
            let table = tx.open_table(SITE_SHARED)?;
            let mut has = BTreeSet::new();
            let mut expired = vec![];
            for row in table.iter()? {
                let (k, v) = row?;
                let key = k.value().to_owned();
                if let (Ok(parsed), Ok(row)) = (
                    key.parse::<SharedKey>(),
                    decode::<Row>(&key, v.value().as_bytes()),
                ) && shared::expired(&Entry::from_row(parsed, row), now)
                {
                    expired.push(key.clone());
                }
                has.insert(key);
            }
            (has, expired)
        };
        let mut stamped = 0;
        for name in names {
            if !has.contains(&format!("node/{name}")) && stamp_node(&tx, &name, &replica)?.is_some()
            {
                stamped += 1;
            }
        }
        for node in nodes {
            if has.contains(&format!("alloc/{node}")) {
                continue;
            }
            let addr: Option<LocalAddress> = tx
                .open_table(ALLOCATIONS)?
                .get(node.as_str())?
                .map(|v| decode(&node, v.value()))
                .transpose()?;
            if stamp_allocation(&tx, &node, addr.as_ref(), &replica)?.is_some() {
                stamped += 1;
            }
        }
        {
            let mut table = tx.open_table(SITE_SHARED)?;
            for key in expired {
                table.remove(key.as_str())?;
            }
        }
        tx.commit()?;
        Ok(stamped)
    }
}

#[cfg(test)]
mod tests;
