//! The gateway's durable store (redb, `DIR/store.redb`): invites, the admissions ledger, signed
//! membership records, and the real addresses of this site's nodes.
//!
//! Each write is one redb transaction, committed (fsynced) before the caller answers anyone.
//! redb holds an exclusive lock on the file, so only one process (the running gateway, or a CLI
//! command while it is down) opens it at a time.
//!
//! A damaged file (truncated, or bytes changed on disk) is found at open: every table is read
//! once, and a failure or a panic inside redb (it asserts on some damaged layouts) becomes
//! [`StoreError::Damaged`], never a crash. [`salvage`] reads what still can be read from such a
//! file, table by table, for `fedgw store rebuild`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub mod audit;
mod salvage;
pub use audit::{AuditEntry, AuditEvent, AuditFilter, audit_entries};
pub use salvage::{Salvage, salvage};
mod hosts;
pub mod shared;
pub use shared::Applied;

const INVITES: TableDefinition<&str, &[u8]> = TableDefinition::new("invites");
const MEMBERS: TableDefinition<&str, &[u8]> = TableDefinition::new("members");
/// Signed membership records: key `kind/org/name` → encoded envelope.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// This site's nodes' real addresses (never replicated): node name → host.
const LOCAL_NODES: TableDefinition<&str, &str> = TableDefinition::new("local_nodes");
/// Remote nodes' Service addresses at this site (Kubernetes ClusterIPs, set over the admin API;
/// never replicated): `org/name` → IP.
const SERVICE_ADDRESSES: TableDefinition<&str, &str> = TableDefinition::new("service_addresses");
/// Small local state by name: [`FREED`].
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Remote nodes' local addresses at this site (never replicated): `org/name` → JSON
/// [`crate::addressing::LocalAddress`], one row per node, so that a change writes only the
/// nodes it touched.
const ALLOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("allocations");
/// `META` key of the allocator's freed values (JSON array of numbers, oldest first; see
/// [`crate::addressing::Allocations::freed`]).
const FREED: &str = "allocations.freed";
/// `META` key under which stores before the `allocations` table kept every allocation as one
/// JSON [`crate::addressing::Allocations`] value; moved into rows at open.
const LEGACY_ALLOCATIONS: &str = "allocations";
/// The Tessera URLs this site's operator registered (never replicated: the published record
/// names the node by its consortium name instead): node name → URL.
const LOCAL_URLS: TableDefinition<&str, &str> = TableDefinition::new("local_urls");
/// This site's nodes' JSON-RPC endpoints (never replicated, never reachable through a tunnel):
/// node name → URL.
const LOCAL_RPC: TableDefinition<&str, &str> = TableDefinition::new("local_rpc");

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (usually the running gateway) has the store open.
    #[error("the store is in use by another process (is `fedgw run` up for this data dir?)")]
    Locked,
    /// A database operation (open, transaction, table, read, write, commit) failed.
    #[error("store operation failed")]
    Db(#[source] Box<redb::Error>),
    /// A blocking store task failed.
    #[error("store task failed: {0}")]
    Task(String),
    /// The file is damaged: redb refused it or failed (or panicked) reading it.
    #[error("store {path} is damaged: {reason}")]
    Damaged {
        /// The store file.
        path: PathBuf,
        /// What redb reported.
        reason: String,
    },
    /// A read failed on purpose (unit tests of the readers' error handling).
    #[cfg(test)]
    #[error("injected read failure")]
    Injected,
    /// A stored value does not decode.
    #[error("corrupt store entry {key:?}")]
    Corrupt {
        /// The key of the bad entry.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A stored invite. The token secret itself is never stored, only its verifier key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The org the invite admits.
    pub org: String,
    /// HMAC verifier key of the token secret (hex), see `fedgw_certs::token::verifier_key`.
    pub verifier_key: String,
    /// Expiry, Unix seconds.
    pub expires_unix: u64,
    /// Joins still allowed.
    pub uses_left: u32,
    /// Creation time, Unix seconds.
    pub created_unix: u64,
}

/// An admitted member org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The org name.
    pub org: String,
    /// Its org CA certificate, PEM.
    pub org_ca_pem: String,
    /// Its first site.
    pub site: String,
    /// Its gateway endpoints.
    pub advertise: Vec<String>,
    /// Admission time, Unix seconds.
    pub admitted_unix: u64,
}

/// Why a redemption was refused. Checked in this order, so that a caller without the secret
/// learns nothing about the invite beyond its existence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No invite with that id.
    #[error("unknown token")]
    UnknownToken,
    /// The proof of possession does not verify.
    #[error("bad token proof")]
    BadProof,
    /// The invite expired.
    #[error("token expired")]
    Expired,
    /// The invite has no uses left.
    #[error("token already used")]
    Used,
    /// The invite is for another org.
    #[error("token is for another org")]
    WrongOrg,
    /// The org is already a member.
    #[error("org is already a member")]
    AlreadyMember,
    /// The request is malformed (its CSR did not sign).
    #[error("bad join request")]
    BadRequest,
}

/// The outcome of [`Store::redeem`].
#[derive(Debug)]
pub enum Redeemed<T, P> {
    /// The invite was consumed and the member recorded; `T` is what the signer returned.
    Admitted(T),
    /// Every check passed but the admission policy is not met yet; nothing was changed.
    Pending(P),
    /// Nothing was changed.
    Refused(Refusal),
}

/// What the signer passed to [`Store::redeem`] produces on admission.
#[derive(Debug)]
pub struct Admission<T> {
    /// The ledger entry.
    pub member: Member,
    /// Membership records to persist in the same transaction: (key, envelope).
    pub records: Vec<(String, Vec<u8>)>,
    /// Their audit entries, appended after `invite.used` in the same transaction.
    pub audit: Vec<AuditEvent>,
    /// Returned to the caller.
    pub out: T,
}

/// Unix seconds of `t` (0 before the epoch).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One of this site's nodes as the store keeps it locally, never published
/// ([`Store::put_local_nodes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    /// The node's name in its org.
    pub name: String,
    /// Its address at this site: IP or host name.
    pub host: String,
    /// Its other addresses at this site (replicas), after `host`.
    pub replicas: Vec<String>,
    /// The Tessera URL registered here, if any.
    pub tessera_url: Option<String>,
    /// Its JSON-RPC endpoint here, if any.
    pub rpc_url: Option<String>,
}

impl LocalNode {
    /// The local part of a node spec (empty strings read as absent).
    pub fn of(spec: &fedgw_proto::v1::NodeSpec) -> Self {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Self {
            name: spec.name.clone(),
            host: spec.host.clone(),
            replicas: spec.replica_hosts.clone(),
            tessera_url: some(&spec.tessera_url),
            rpc_url: some(&spec.rpc_url),
        }
    }
}

/// The durable store.
#[derive(Debug)]
pub struct Store {
    db: Database,
    /// This gateway's replica name, stamped on the shared entries it writes
    /// ([`Store::set_replica`]).
    replica: std::sync::OnceLock<String>,
    /// Unit tests make reads fail with this.
    #[cfg(test)]
    fail_reads: std::sync::atomic::AtomicBool,
}

thread_local! {
    /// Set while [`quietly`] runs a closure on this thread: its panics are caught and reported
    /// as errors, so the panic hook stays silent for them.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into `Err(message)` without printing it. redb panics
/// on some damaged files (failed assertions while loading its allocator state); the caller
/// reports those as a damaged store instead.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    out.map_err(|panic| {
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        format!(
            "redb failed a consistency check: {}",
            text.lines().next().unwrap_or_default()
        )
    })
}

/// Whether a redb error means the file itself is bad (rather than, say, a full disk).
fn is_damage(e: &redb::Error) -> bool {
    match e {
        redb::Error::Corrupted(_)
        | redb::Error::RepairAborted
        | redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. } => true,
        redb::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store values serialise: plain structs of strings and ints")
}

impl Store {
    /// Opens (or creates) the store at `path` and reads every table once, so that damage shows
    /// here rather than in the middle of serving. Errors: [`StoreError::Locked`] when another
    /// process holds it, [`StoreError::Damaged`] when the file is damaged (redb's own errors
    /// and its panics alike), [`StoreError::Db`] for other failures (IO, permissions).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let damaged = |reason: String| StoreError::Damaged {
            path: path.to_owned(),
            reason,
        };
        match quietly(|| Self::open_and_scan(path)) {
            Ok(Err(StoreError::Db(e))) if is_damage(&e) => Err(damaged(e.to_string())),
            Ok(Err(StoreError::Corrupt { key, source })) => {
                Err(damaged(format!("entry {key:?} does not decode: {source}")))
            }
            Ok(result) => result,
            Err(panic) => Err(damaged(panic)),
        }
    }

    fn open_and_scan(path: &Path) -> Result<Self, StoreError> {
        let store = Self::open_db(path)?;
        store.migrate_allocations()?;
        store.adopt_unrecorded()?;
        store.records()?;
        store.audit_all()?;
        store.local_nodes()?;
        store.local_replicas()?;
        store.local_urls()?;
        store.local_rpc()?;
        store.service_addresses()?;
        store.allocations()?;
        store.shared_entries()?;
        store.members()?;
        let tx = store.db.begin_read()?;
        for entry in tx.open_table(INVITES)?.iter()? {
            let (k, v) = entry?;
            decode::<Invite>(k.value(), v.value())?;
        }
        drop(tx);
        Ok(store)
    }

    fn open_db(path: &Path) -> Result<Self, StoreError> {
        // redb would create a missing file with the umask's mode; the store holds invites
        crate::datadir::create_private_file(path)
            .map_err(|e| StoreError::Db(Box::new(redb::Error::Io(e))))?;
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked,
            e => StoreError::Db(Box::new(e.into())),
        })?;
        // create missing tables; an existing store needs no write (and no fsync) to open
        let complete = {
            let rx = db.begin_read()?;
            rx.open_table(INVITES).is_ok()
                && rx.open_table(MEMBERS).is_ok()
                && rx.open_table(RECORDS).is_ok()
                && rx.open_table(LOCAL_NODES).is_ok()
                && rx.open_table(META).is_ok()
                && rx.open_table(ALLOCATIONS).is_ok()
                && rx.open_table(SERVICE_ADDRESSES).is_ok()
                && rx.open_table(LOCAL_URLS).is_ok()
                && rx.open_table(LOCAL_RPC).is_ok()
                && rx.open_table(audit::AUDIT).is_ok()
                && rx.open_table(hosts::LOCAL_REPLICAS).is_ok()
                && rx.open_table(shared::SITE_SHARED).is_ok()
        };
        if !complete {
            let tx = db.begin_write()?;
            tx.open_table(INVITES)?;
            tx.open_table(MEMBERS)?;
            tx.open_table(RECORDS)?;
            tx.open_table(LOCAL_NODES)?;
            tx.open_table(META)?;
            tx.open_table(ALLOCATIONS)?;
            tx.open_table(SERVICE_ADDRESSES)?;
            tx.open_table(LOCAL_URLS)?;
            tx.open_table(LOCAL_RPC)?;
            tx.open_table(audit::AUDIT)?;
            tx.open_table(hosts::LOCAL_REPLICAS)?;
            tx.open_table(shared::SITE_SHARED)?;
            tx.commit()?;
        }
        Ok(Self {
            db,
            replica: std::sync::OnceLock::new(),
            #[cfg(test)]
            fail_reads: Default::default(),
        })
    }

    /// Makes every later read of local state fail (`true`) or work again (`false`).
    #[cfg(test)]
    pub(crate) fn fail_reads(&self, fail: bool) {
        self.fail_reads
            .store(fail, std::sync::atomic::Ordering::Relaxed);
    }

    #[cfg(test)]
    fn injected(&self) -> Result<(), StoreError> {
        if self.fail_reads.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Injected);
        }
        Ok(())
    }

    #[cfg(not(test))]
    #[allow(clippy::unnecessary_wraps, clippy::unused_self)]
    fn injected(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Stores a new invite under `id`, with its `invite.created` audit entry.
    pub fn put_invite(&self, id: &str, invite: &Invite) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(INVITES)?
            .insert(id, encode(invite).as_slice())?;
        let detail = format!("{} {}", invite.expires_unix, invite.uses_left);
        let event = AuditEvent::local("invite.created", &invite.org, id, &detail);
        audit::append(&tx, &[event], audit::now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// Reads an invite.
    pub fn invite(&self, id: &str) -> Result<Option<Invite>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(INVITES)?;
        let value = table.get(id)?;
        value.map(|v| decode(id, v.value())).transpose()
    }

    /// Records a member (used for the founder and by a joiner for itself).
    pub fn put_member(&self, member: &Member) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(MEMBERS)?
            .insert(member.org.as_str(), encode(member).as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// All members, sorted by org.
    pub fn members(&self) -> Result<Vec<Member>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(MEMBERS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Redeems invite `id` for `org` in one write transaction: checks (in [`Refusal`] order)
    /// that the invite exists, `check_proof` accepts its verifier key, it is unexpired at `now`
    /// with uses left, it names `org`, and `org` is not yet a member; then asks `policy` (which
    /// may answer "pending": nothing changes), calls `sign` (which issues the org CA and the
    /// member record), decrements the uses, and records the member and its records. Concurrent
    /// redemptions are serialised by redb: a single-use token admits exactly one of them.
    pub fn redeem<T, P>(
        &self,
        id: &str,
        org: &str,
        now: SystemTime,
        check_proof: impl FnOnce(&[u8; 32]) -> bool,
        policy: impl FnOnce() -> Option<P>,
        sign: impl FnOnce() -> Option<Admission<T>>,
    ) -> Result<Redeemed<T, P>, StoreError> {
        let tx = self.db.begin_write()?;
        let outcome = {
            let mut invites = tx.open_table(INVITES)?;
            let mut members = tx.open_table(MEMBERS)?;
            let invite: Option<Invite> = invites
                .get(id)?
                .map(|v| decode(id, v.value()))
                .transpose()?;
            let refusal = match &invite {
                None => Some(Refusal::UnknownToken),
                Some(inv) if !decode_key(&inv.verifier_key).is_some_and(|k| check_proof(&k)) => {
                    Some(Refusal::BadProof)
                }
                Some(inv) if unix(now) >= inv.expires_unix => Some(Refusal::Expired),
                Some(inv) if inv.uses_left == 0 => Some(Refusal::Used),
                Some(inv) if inv.org != org => Some(Refusal::WrongOrg),
                Some(_) if members.get(org)?.is_some() => Some(Refusal::AlreadyMember),
                Some(_) => None,
            };
            match (refusal, invite) {
                (Some(r), _) => Redeemed::Refused(r),
                (None, None) => Redeemed::Refused(Refusal::UnknownToken),
                (None, Some(mut inv)) => match policy() {
                    Some(p) => Redeemed::Pending(p),
                    None => match sign() {
                        None => Redeemed::Refused(Refusal::BadRequest),
                        Some(admission) => {
                            inv.uses_left -= 1;
                            invites.insert(id, encode(&inv).as_slice())?;
                            members.insert(org, encode(&admission.member).as_slice())?;
                            let mut records = tx.open_table(RECORDS)?;
                            for (key, bytes) in &admission.records {
                                records.insert(key.as_str(), bytes.as_slice())?;
                            }
                            let used = AuditEvent::local("invite.used", org, id, "");
                            let mut events = vec![used];
                            events.extend(admission.audit.iter().cloned());
                            audit::append(&tx, &events, audit::now_ms())?;
                            Redeemed::Admitted(admission.out)
                        }
                    },
                },
            }
        };
        match outcome {
            Redeemed::Admitted(_) => tx.commit()?,
            Redeemed::Pending(_) | Redeemed::Refused(_) => tx.abort()?,
        }
        Ok(outcome)
    }

    /// Persists membership records (key, envelope) and their audit entries in one transaction
    /// (fsynced on commit).
    pub fn put_records(
        &self,
        records: &[(String, Arc<Vec<u8>>)],
        audit: &[AuditEvent],
    ) -> Result<(), StoreError> {
        self.replace_records(records, &[], audit)
    }

    /// Persists membership records (key, envelope), deletes the records under `remove` and
    /// appends `audit` to the audit trail, in one transaction (fsynced on commit).
    pub fn replace_records(
        &self,
        records: &[(String, Arc<Vec<u8>>)],
        remove: &[String],
        audit: &[AuditEvent],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(RECORDS)?;
            for key in remove {
                table.remove(key.as_str())?;
            }
            for (key, bytes) in records {
                table.insert(key.as_str(), bytes.as_slice())?;
            }
        }
        audit::append(&tx, audit, audit::now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// Every stored membership record: (key, envelope).
    pub fn records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(RECORDS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Records the real address of a local node (and stamps its shared entry).
    pub fn put_local_node(&self, name: &str, host: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(LOCAL_NODES)?.insert(name, host)?;
        shared::stamp_node(&tx, name, self.replica())?;
        tx.commit()?;
        Ok(())
    }

    /// Records several local nodes in one write: each one's address, registered Tessera URL
    /// and JSON-RPC endpoint (an absent one is removed). Returns their shared entries, stamped
    /// in the same transaction, for the siblings.
    pub fn put_local_nodes(
        &self,
        nodes: &[LocalNode],
    ) -> Result<Vec<crate::site::shared::Entry>, StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut hosts = tx.open_table(LOCAL_NODES)?;
            let mut urls = tx.open_table(LOCAL_URLS)?;
            let mut rpc = tx.open_table(LOCAL_RPC)?;
            for n in nodes {
                hosts.insert(n.name.as_str(), n.host.as_str())?;
                hosts::put(&tx, &n.name, &n.replicas)?;
                match &n.tessera_url {
                    Some(url) => urls.insert(n.name.as_str(), url.as_str())?,
                    None => urls.remove(n.name.as_str())?,
                };
                match &n.rpc_url {
                    Some(url) => rpc.insert(n.name.as_str(), url.as_str())?,
                    None => rpc.remove(n.name.as_str())?,
                };
            }
        }
        let mut entries = vec![];
        for n in nodes {
            entries.extend(shared::stamp_node(&tx, &n.name, self.replica())?);
        }
        tx.commit()?;
        Ok(entries)
    }

    /// Forgets a local node's address (and its registered Tessera URL and RPC endpoint).
    /// Returns its shared entry (a tombstone), stamped in the same transaction.
    pub fn remove_local_node(
        &self,
        name: &str,
    ) -> Result<Vec<crate::site::shared::Entry>, StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(LOCAL_NODES)?.remove(name)?;
        tx.open_table(LOCAL_URLS)?.remove(name)?;
        tx.open_table(LOCAL_RPC)?.remove(name)?;
        hosts::put(&tx, name, &[])?;
        let entries = shared::stamp_node(&tx, name, self.replica())?
            .into_iter()
            .collect();
        tx.commit()?;
        Ok(entries)
    }

    /// Records the Tessera URL a local node was registered with (`None`: it has none).
    pub fn put_local_url(&self, name: &str, url: Option<&str>) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(LOCAL_URLS)?;
            match url {
                Some(url) => {
                    table.insert(name, url)?;
                }
                None => {
                    table.remove(name)?;
                }
            }
        }
        shared::stamp_node(&tx, name, self.replica())?;
        tx.commit()?;
        Ok(())
    }

    /// Records the JSON-RPC endpoint of a local node (`None`: it has none).
    pub fn put_local_rpc(&self, name: &str, url: Option<&str>) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(LOCAL_RPC)?;
            match url {
                Some(url) => table.insert(name, url)?,
                None => table.remove(name)?,
            };
        }
        shared::stamp_node(&tx, name, self.replica())?;
        tx.commit()?;
        Ok(())
    }

    /// Every entry of a name → text table of this site's nodes.
    fn names(
        &self,
        def: TableDefinition<&str, &str>,
    ) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(def)?;
        let mut out = std::collections::BTreeMap::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.insert(k.value().to_owned(), v.value().to_owned());
        }
        Ok(out)
    }

    /// Every local node's JSON-RPC endpoint: name → URL.
    pub fn local_rpc(&self) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        self.names(LOCAL_RPC)
    }

    /// Every local node's registered Tessera URL: name → URL.
    pub fn local_urls(&self) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        self.names(LOCAL_URLS)
    }

    /// The JSON value under `key` in the `meta` table (the default when absent).
    fn meta<T: for<'de> Deserialize<'de> + Default>(&self, key: &str) -> Result<T, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(META)?;
        let value = table.get(key)?;
        Ok(value
            .map(|v| decode(key, v.value()))
            .transpose()?
            .unwrap_or_default())
    }

    /// Writes `value` as JSON under `key` in the `meta` table.
    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(META)?.insert(key, encode(value).as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// The remote nodes' local addresses: every row of the `allocations` table and the freed
    /// values. A store not yet migrated (as [`salvage`] reads it) adds its single legacy value,
    /// rows winning over it.
    pub fn allocations(&self) -> Result<crate::addressing::Allocations, StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let (mut nodes, mut freed) = match meta.get(LEGACY_ALLOCATIONS)? {
            Some(v) => {
                let a: crate::addressing::Allocations = decode(LEGACY_ALLOCATIONS, v.value())?;
                (a.nodes, a.freed)
            }
            None => Default::default(),
        };
        if let Some(v) = meta.get(FREED)? {
            freed = decode(FREED, v.value())?;
        }
        for entry in tx.open_table(ALLOCATIONS)?.iter()? {
            let (k, v) = entry?;
            nodes.insert(k.value().to_owned(), decode(k.value(), v.value())?);
        }
        Ok(crate::addressing::Allocations::from_parts(nodes, freed))
    }

    /// Persists one change of the remote nodes' local addresses in one transaction: a row per
    /// node set or removed, and the freed values if they changed. Returns the number of rows
    /// written (inserted or removed, the freed values counting as one); an empty change
    /// writes nothing and commits nothing.
    pub fn write_allocations(
        &self,
        change: &crate::addressing::AllocationChange,
    ) -> Result<usize, StoreError> {
        self.write_shared_allocations(change).map(|(rows, _)| rows)
    }

    /// [`Store::write_allocations`], returning also the shared entries of the nodes it set or
    /// removed, stamped in the same transaction, for the siblings.
    pub fn write_shared_allocations(
        &self,
        change: &crate::addressing::AllocationChange,
    ) -> Result<(usize, Vec<crate::site::shared::Entry>), StoreError> {
        if change.is_empty() {
            return Ok((0, vec![]));
        }
        let tx = self.db.begin_write()?;
        let mut rows = 0;
        let mut entries = vec![];
        {
            let mut table = tx.open_table(ALLOCATIONS)?;
            for key in &change.removed {
                table.remove(key.as_str())?;
                rows += 1;
            }
            for (key, addr) in &change.set {
                table.insert(key.as_str(), encode(addr).as_slice())?;
                rows += 1;
            }
            if let Some(freed) = &change.freed {
                tx.open_table(META)?
                    .insert(FREED, encode(freed).as_slice())?;
                rows += 1;
            }
        }
        for key in &change.removed {
            entries.extend(shared::stamp_allocation(&tx, key, None, self.replica())?);
        }
        for (key, addr) in &change.set {
            entries.extend(shared::stamp_allocation(
                &tx,
                key,
                Some(addr),
                self.replica(),
            )?);
        }
        tx.commit()?;
        Ok((rows, entries))
    }

    /// Moves the allocations of a store written before the `allocations` table (one JSON value
    /// in `META`) into rows, and removes the old value, in one transaction. Returns whether
    /// there was anything to move. Errors: [`StoreError::Corrupt`] when the old value does not
    /// decode (the store then does not open: nothing is dropped silently).
    fn migrate_allocations(&self) -> Result<bool, StoreError> {
        {
            let rx = self.db.begin_read()?;
            if rx.open_table(META)?.get(LEGACY_ALLOCATIONS)?.is_none() {
                return Ok(false);
            }
        }
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let old: crate::addressing::Allocations = match meta.get(LEGACY_ALLOCATIONS)? {
                Some(v) => decode(LEGACY_ALLOCATIONS, v.value())?,
                None => return Ok(false),
            };
            let mut rows = tx.open_table(ALLOCATIONS)?;
            for (key, addr) in &old.nodes {
                // a row written since (none should be) is newer than the old value
                if rows.get(key.as_str())?.is_none() {
                    rows.insert(key.as_str(), encode(addr).as_slice())?;
                }
            }
            if meta.get(FREED)?.is_none() {
                meta.insert(FREED, encode(&old.freed).as_slice())?;
            }
            meta.remove(LEGACY_ALLOCATIONS)?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// The live-peering links this site's nodes were last brought to hold, as the peering keeper
    /// stored them with [`Store::put_peering`] (its own JSON shape; the default when none was
    /// stored).
    pub fn peering<T: for<'de> Deserialize<'de> + Default>(&self) -> Result<T, StoreError> {
        self.meta("peering")
    }

    /// Persists the live-peering links applied, as JSON under the `meta` key `peering`.
    pub fn put_peering<T: Serialize>(&self, links: &T) -> Result<(), StoreError> {
        self.put_meta("peering", links)
    }

    /// Sets the Service address of remote node `key` (`org/name`), or clears it with `None`,
    /// and forgets every entry whose key `keep` refuses (nodes gone from the view), in one
    /// transaction.
    pub fn set_service_address(
        &self,
        key: &str,
        ip: Option<std::net::IpAddr>,
        keep: impl Fn(&str) -> bool,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(SERVICE_ADDRESSES)?;
            match ip {
                Some(ip) => {
                    table.insert(key, ip.to_string().as_str())?;
                }
                None => {
                    table.remove(key)?;
                }
            }
            table.retain(|k, _| k == key || keep(k))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every remote node's Service address: `org/name` → IP (entries that do not parse are
    /// skipped: they were written as IPs by [`Store::set_service_address`]).
    pub fn service_addresses(
        &self,
    ) -> Result<std::collections::BTreeMap<String, std::net::IpAddr>, StoreError> {
        self.injected()?;
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SERVICE_ADDRESSES)?;
        let mut out = std::collections::BTreeMap::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            if let Ok(ip) = v.value().parse() {
                out.insert(k.value().to_owned(), ip);
            }
        }
        Ok(out)
    }

    /// The entries for some nodes only, in one read: this site's nodes `local` (name → host)
    /// and remote nodes' Service addresses `remote` (`org/name` → IP). A node without an entry
    /// is left out. Costs the number of names asked, not the size of the tables.
    pub fn site_entries(
        &self,
        local: &[String],
        remote: &[String],
    ) -> Result<SiteEntries, StoreError> {
        self.injected()?;
        let tx = self.db.begin_read()?;
        let mut out = SiteEntries::default();
        let table = tx.open_table(LOCAL_NODES)?;
        for name in local {
            if let Some(v) = table.get(name.as_str())? {
                out.local.insert(name.clone(), v.value().to_owned());
            }
        }
        out.replicas = hosts::get(&tx, local)?;
        let table = tx.open_table(SERVICE_ADDRESSES)?;
        for key in remote {
            if let Some(ip) = table
                .get(key.as_str())?
                .and_then(|v| v.value().parse().ok())
            {
                out.services.insert(key.clone(), ip);
            }
        }
        Ok(out)
    }

    /// Every local node address: name → host.
    pub fn local_nodes(&self) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        self.injected()?;
        self.names(LOCAL_NODES)
    }
}

/// Some nodes' entries of the site tables ([`Store::site_entries`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SiteEntries {
    /// This site's nodes: name → host.
    pub local: std::collections::BTreeMap<String, String>,
    /// This site's nodes with replicas: name → the hosts after `local`'s.
    pub replicas: std::collections::BTreeMap<String, Vec<String>>,
    /// Remote nodes' Service addresses: `org/name` → IP.
    pub services: std::collections::BTreeMap<String, std::net::IpAddr>,
}

fn decode_key(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Hex-encodes a verifier key for [`Invite::verifier_key`].
pub fn encode_key(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The expiry of an invite created at `now` with `ttl`.
pub fn expiry(now: SystemTime, ttl: Duration) -> u64 {
    unix(now).saturating_add(ttl.as_secs())
}

mod snapshot;
pub use snapshot::{MAX_SNAPSHOT_BYTES, SNAPSHOT_FORMAT, Snapshot, SnapshotError};

#[cfg(test)]
mod tests;
