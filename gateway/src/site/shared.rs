//! Site state shared between the replicas of one site (docs/DESIGN.md section 8, "Replicas
//! of a site"): this site's node registrations (tables `local_nodes`, `local_urls`,
//! `local_rpc`, `local_replicas`) and remote nodes' local addresses (table `allocations`).
//! Pure: the merge rules, the allocation leader and the wire form; the store
//! ([`crate::store::Store::apply_shared`]) applies them in one transaction and the sync
//! session ([`crate::membership::sync`]) carries them between siblings.
//!
//! - Every entry is last-writer-wins by (version, replica name); the version is a hybrid clock,
//!   `max(held + 1, now in Unix ms)` ([`next_version`]), so a writer always supersedes what it
//!   holds and clocks only break ties between writers.
//! - A deletion is a tombstone (an entry without a value), kept [`TOMBSTONE_KEEP_MS`] so that a
//!   replica that was away that long cannot bring the entry back, then purged ([`expired`]).
//! - Only the allocation leader allocates ([`is_leader`]): the lowest replica name among itself
//!   and its live siblings. Two live allocations of one node that differ (made on both sides of
//!   a partition) are a conflict: the one written by the lower replica name wins whatever the
//!   versions ([`merge`]); one address held by two nodes keeps the earliest claim by the lowest
//!   replica name, and the other node loses its address until the leader gives it a new one
//!   ([`effective`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use fedgw_proto::v1 as pb;
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::addressing::{AddressMode, LocalAddress};
use crate::membership::NodeKey;

/// How long a tombstone is kept before it is purged: 7 days, in ms.
pub const TOMBSTONE_KEEP_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Most entries per `SyncSiteState` message.
pub const MAX_MESSAGE_ENTRIES: usize = 256;
/// Most encoded bytes of entries per `SyncSiteState` message (a bigger single entry travels
/// alone).
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024;

/// What an entry is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SharedKey {
    /// A node of this site, by name: `node/<name>`.
    Node(String),
    /// A remote node's local address: `alloc/<org>/<name>`.
    Allocation(NodeKey),
}

impl std::fmt::Display for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SharedKey::Node(name) => write!(f, "node/{name}"),
            SharedKey::Allocation(key) => write!(f, "alloc/{key}"),
        }
    }
}

/// Why a shared entry from a sibling was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The key is neither `node/<name>` nor `alloc/<org>/<name>` with consortium labels.
    #[error("bad shared key {0:?}")]
    Key(String),
    /// The value is of the other kind than the key.
    #[error("shared entry {0}: value of the wrong kind")]
    Kind(String),
    /// An allocation's IP or port does not parse.
    #[error("shared entry {0}: bad address")]
    Address(String),
    /// The writer's replica name is not a label (nor empty).
    #[error("shared entry {0}: bad replica name")]
    Replica(String),
    /// A registration's host or replica host is not a dial target, or it lists more hosts
    /// than a node may have ([`crate::tunnel::replicas::MAX_REPLICAS`]).
    #[error("shared entry {0}: bad host")]
    Host(String),
}

impl std::str::FromStr for SharedKey {
    type Err = EntryError;

    /// Parses `node/<name>` or `alloc/<org>/<name>`.
    fn from_str(s: &str) -> Result<Self, EntryError> {
        let bad = || EntryError::Key(s.chars().take(80).collect());
        if let Some(name) = s.strip_prefix("node/") {
            fedgw_certs::names::validate_label("node", name).map_err(|_| bad())?;
            return Ok(SharedKey::Node(name.to_owned()));
        }
        if let Some(key) = s.strip_prefix("alloc/") {
            return key.parse().map(SharedKey::Allocation).map_err(|_| bad());
        }
        Err(bad())
    }
}

/// A node registered at this site: what `fedgw node add` keeps locally (never published).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Its address at this site: IP or host name.
    pub host: String,
    /// Its other addresses (replicas of the node), after `host`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// The Tessera URL registered here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tessera_url: Option<String>,
    /// Its JSON-RPC endpoint here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_url: Option<String>,
}

/// An entry's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Value {
    /// For [`SharedKey::Node`].
    Node(Registration),
    /// For [`SharedKey::Allocation`].
    Allocation(LocalAddress),
}

/// One shared entry: a key, who wrote it when, and its value (`None`: deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What it is about.
    pub key: SharedKey,
    /// The writer's hybrid clock ([`next_version`]).
    pub version: u64,
    /// The writer's replica name (empty: the site's first gateway).
    pub replica: String,
    /// The value; `None` for a tombstone.
    pub value: Option<Value>,
}

/// An entry as the store keeps it under its key (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// [`Entry::version`].
    pub version: u64,
    /// [`Entry::replica`].
    #[serde(default)]
    pub replica: String,
    /// [`Entry::value`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

impl Entry {
    /// The entry from its stored row.
    pub fn from_row(key: SharedKey, row: Row) -> Self {
        Self {
            key,
            version: row.version,
            replica: row.replica,
            value: row.value,
        }
    }

    /// The stored row.
    pub fn row(&self) -> Row {
        Row {
            version: self.version,
            replica: self.replica.clone(),
            value: self.value.clone(),
        }
    }

    /// The live allocation it holds, if any.
    pub fn allocation(&self) -> Option<&LocalAddress> {
        match &self.value {
            Some(Value::Allocation(a)) => Some(a),
            _ => None,
        }
    }
}

/// The version a writer gives an entry it holds at `held` (`None`: holds nothing), at `now_ms`.
pub fn next_version(held: Option<u64>, now_ms: u64) -> u64 {
    held.map_or(now_ms, |h| now_ms.max(h.saturating_add(1)))
}

/// Whether `entry` is a tombstone older than [`TOMBSTONE_KEEP_MS`] at `now_ms` (its version is
/// the time of the deletion, at the latest).
pub fn expired(entry: &Entry, now_ms: u64) -> bool {
    entry.value.is_none() && now_ms.saturating_sub(entry.version) > TOMBSTONE_KEEP_MS
}

/// Whether the replica `own` allocates: no live sibling has a lower name.
pub fn is_leader<'a>(own: &str, live_siblings: impl IntoIterator<Item = &'a str>) -> bool {
    live_siblings.into_iter().all(|s| own < s)
}

/// What merging an incoming entry into the held one decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// The incoming entry replaces the held one.
    pub take: bool,
    /// Two live allocations of one node by different replicas differ (a partition): the lower
    /// replica name won.
    pub conflict: bool,
}

/// The values an address takes up in `mode`: its IP in IP mode, its local ports in port mode.
fn claims(mode: &AddressMode, a: &LocalAddress) -> Vec<(IpAddr, u16)> {
    match mode {
        AddressMode::Ip { .. } => vec![(a.ip, 0)],
        AddressMode::Port { .. } => a.ports.values().map(|p| (a.ip, *p)).collect(),
    }
}

/// Whether two allocations of one node give it different addresses: another IP in IP mode (the
/// ports are the node's real ones and follow its record), another local port for a port name
/// both have in port mode.
fn differ(mode: &AddressMode, a: &LocalAddress, b: &LocalAddress) -> bool {
    match mode {
        AddressMode::Ip { .. } => a.ip != b.ip,
        AddressMode::Port { .. } => {
            a.ip != b.ip
                || a.ports
                    .iter()
                    .any(|(name, p)| b.ports.get(name).is_some_and(|q| q != p))
        }
    }
}

/// Merges `incoming` into `held` (same key): last writer wins by (version, replica name),
/// except that of two live, differing allocations by different replicas the lower replica
/// name's wins.
pub fn merge(held: Option<&Entry>, incoming: &Entry, mode: &AddressMode) -> Merged {
    let Some(held) = held else {
        return Merged {
            take: true,
            conflict: false,
        };
    };
    if let (Some(a), Some(b)) = (held.allocation(), incoming.allocation())
        && held.replica != incoming.replica
        && differ(mode, a, b)
    {
        return Merged {
            take: incoming.replica < held.replica,
            conflict: true,
        };
    }
    Merged {
        take: (incoming.version, &incoming.replica) > (held.version, &held.replica),
        conflict: false,
    }
}

/// The addresses served from the held allocation entries: every live one, except that an
/// address claimed by several nodes stays with the claim of the lowest replica name, then the
/// lowest version (the earliest), then the lowest key. Returns the served addresses
/// (`org/name` → address) and the nodes that lost theirs, each with the node that kept it.
pub fn effective<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
    mode: &AddressMode,
) -> (BTreeMap<String, LocalAddress>, Vec<(String, String)>) {
    let mut live: Vec<(&'a Entry, &'a LocalAddress)> = entries
        .into_iter()
        .filter_map(|e| Some((e, e.allocation()?)))
        .collect();
    live.sort_by(|(a, _), (b, _)| {
        (&a.replica, a.version, &a.key).cmp(&(&b.replica, b.version, &b.key))
    });
    let mut taken: BTreeMap<(IpAddr, u16), String> = BTreeMap::new();
    let mut served = BTreeMap::new();
    let mut lost = vec![];
    for (entry, addr) in live {
        let SharedKey::Allocation(node) = &entry.key else {
            continue;
        };
        let node = node.to_string();
        let values = claims(mode, addr);
        if let Some(winner) = values.iter().find_map(|v| taken.get(v)) {
            lost.push((node, winner.clone()));
            continue;
        }
        for v in values {
            taken.insert(v, node.clone());
        }
        served.insert(node, addr.clone());
    }
    (served, lost)
}

/// The nodes among `changed` whose address conflict `lost` reports (each pair once), so that a
/// conflict is reported when the entries that make it arrive, not on every later merge.
pub fn new_losses<'a>(
    lost: &'a [(String, String)],
    changed: &BTreeSet<String>,
) -> impl Iterator<Item = &'a (String, String)> {
    lost.iter()
        .filter(|(loser, winner)| changed.contains(loser) || changed.contains(winner))
}

impl From<&Entry> for pb::SiteEntry {
    fn from(e: &Entry) -> Self {
        let value = e.value.as_ref().map(|v| match v {
            Value::Node(r) => pb::site_entry::Value::Node(pb::SiteNode {
                host: r.host.clone(),
                replica_hosts: r.replicas.clone(),
                tessera_url: r.tessera_url.clone().unwrap_or_default(),
                rpc_url: r.rpc_url.clone().unwrap_or_default(),
            }),
            Value::Allocation(a) => pb::site_entry::Value::Allocation(pb::SiteAllocation {
                ip: a.ip.to_string(),
                ports: a
                    .ports
                    .iter()
                    .map(|(k, v)| (k.clone(), u32::from(*v)))
                    .collect(),
            }),
        });
        pb::SiteEntry {
            key: e.key.to_string(),
            version: e.version,
            replica: e.replica.clone(),
            value,
        }
    }
}

impl TryFrom<pb::SiteEntry> for Entry {
    type Error = EntryError;

    /// Checks a sibling's entry: the key parses, the value is of the key's kind, an
    /// allocation's IP and ports parse, the replica name is a label or empty.
    fn try_from(e: pb::SiteEntry) -> Result<Self, EntryError> {
        let key: SharedKey = e.key.parse()?;
        if !e.replica.is_empty()
            && fedgw_certs::names::validate_label("replica", &e.replica).is_err()
        {
            return Err(EntryError::Replica(e.key));
        }
        let some = |s: String| (!s.is_empty()).then_some(s);
        let value = match (&key, e.value) {
            (_, None) => None,
            (SharedKey::Node(_), Some(pb::site_entry::Value::Node(n))) => {
                // the same checks as `fedgw node add` at this replica
                let hosts = std::iter::once(&n.host)
                    .filter(|h| !h.is_empty())
                    .chain(&n.replica_hosts);
                if n.replica_hosts.len() + 1 > crate::tunnel::replicas::MAX_REPLICAS
                    || hosts.map(|h| crate::net::check_host(h)).any(|r| r.is_err())
                {
                    return Err(EntryError::Host(e.key));
                }
                Some(Value::Node(Registration {
                    host: n.host,
                    replicas: n.replica_hosts,
                    tessera_url: some(n.tessera_url),
                    rpc_url: some(n.rpc_url),
                }))
            }
            (SharedKey::Allocation(_), Some(pb::site_entry::Value::Allocation(a))) => {
                let bad = || EntryError::Address(e.key.clone());
                let ip = a.ip.parse().map_err(|_| bad())?;
                let mut ports = BTreeMap::new();
                for (name, port) in a.ports {
                    let port = u16::try_from(port)
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(bad)?;
                    ports.insert(name, port);
                }
                Some(Value::Allocation(LocalAddress { ip, ports }))
            }
            _ => return Err(EntryError::Kind(e.key)),
        };
        Ok(Entry {
            key,
            version: e.version,
            replica: e.replica,
            value,
        })
    }
}

/// Splits entries into `SyncSiteState` messages from `replica` of at most
/// [`MAX_MESSAGE_ENTRIES`] entries and about [`MAX_MESSAGE_BYTES`] bytes each.
pub fn messages(replica: &str, entries: &[Entry]) -> Vec<pb::SyncSiteState> {
    let mut out = vec![];
    let mut cur: Vec<pb::SiteEntry> = vec![];
    let mut size = 0;
    for e in entries {
        let wire = pb::SiteEntry::from(e);
        let len = wire.encoded_len();
        if !cur.is_empty() && (cur.len() >= MAX_MESSAGE_ENTRIES || size + len > MAX_MESSAGE_BYTES) {
            out.push(pb::SyncSiteState {
                replica: replica.to_owned(),
                entries: std::mem::take(&mut cur),
            });
            size = 0;
        }
        size += len;
        cur.push(wire);
    }
    if !cur.is_empty() {
        out.push(pb::SyncSiteState {
            replica: replica.to_owned(),
            entries: cur,
        });
    }
    out
}

#[cfg(test)]
mod tests;
