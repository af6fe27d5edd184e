//! The audit trail: a hash-chained, append-only log in the store (table `audit`) of every
//! record this gateway accepted and every action it performed itself (invites created and
//! used, certificates issued, chain RPC calls).
//!
//! Each entry carries a sequence number (1, 2, ...), the local time in Unix milliseconds, a
//! kind, the org and subject it is about, who signed it (an org, `root`, or `local` for this
//! gateway's own actions), the SHA-256 of what it records (the record's envelope bytes, or the
//! event's canonical encoding) and the previous entry's hash; its own hash covers all of these
//! ([`entry_hash`]). Changing, removing or reordering an entry breaks the chain, which
//! [`verify_chain`] finds.
//!
//! Records are appended in the same write transaction that stores them, so a process that dies
//! mid-way loses both or neither. Retention: every entry is kept. An entry is about 400 bytes
//! of JSON; a consortium of 50 orgs with 100 nodes each, changing every node once a day, adds
//! about 2 MB a day, under a gigabyte a year. Reads are bounded by [`MAX_READ`] entries.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{Store, StoreError, decode, encode};

/// Audit entries: sequence number → JSON [`AuditEntry`].
pub(super) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Most entries one read returns ([`audit_entries`]), newest first.
pub const MAX_READ: usize = 100_000;

/// `signer` of the entries for this gateway's own actions.
pub const LOCAL: &str = "local";

/// What one audit entry records, before it is chained ([`Store::append_audit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// What happened: a record kind (`member`, `node`, ...), `tombstone.<kind>` for a deletion,
    /// or a local action (`invite.created`, `invite.used`, `cert.issued`, `chain.raft_add`, ...).
    pub kind: String,
    /// The org it is about.
    pub org: String,
    /// What within the org: a node, site or candidate name, an invite id, a certificate serial.
    pub subject: String,
    /// Who signed the record: an org, `root`, or [`LOCAL`] for this gateway's own actions.
    pub signer: String,
    /// SHA-256 of the record's envelope bytes, or of [`AuditEvent::local`]'s canonical
    /// encoding of the action.
    pub record_hash: [u8; 32],
    /// For a signed record: its store key `kind/org/name`, so that `--verify` re-checks its
    /// envelope; `None` for local actions.
    pub record_key: Option<String>,
}

impl AuditEvent {
    /// A local action of this gateway: the hash covers kind, org, subject and `detail` (what
    /// else identifies the action, e.g. a certificate's SPKI hash), each length-prefixed.
    pub fn local(kind: &str, org: &str, subject: &str, detail: &str) -> Self {
        let mut h = sha2::Sha256::new();
        for part in [kind, org, subject, detail] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        Self {
            kind: kind.to_owned(),
            org: org.to_owned(),
            subject: subject.to_owned(),
            signer: LOCAL.to_owned(),
            record_hash: h.finalize().into(),
            record_key: None,
        }
    }
}

/// One entry of the audit trail as stored and as `fedgw audit --json` prints it. Hashes are
/// lowercase hex (64 characters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// Local time of the append, Unix milliseconds.
    pub time_ms: u64,
    /// See [`AuditEvent::kind`].
    pub kind: String,
    /// See [`AuditEvent::org`].
    pub org: String,
    /// See [`AuditEvent::subject`].
    pub subject: String,
    /// See [`AuditEvent::signer`].
    pub signer: String,
    /// See [`AuditEvent::record_hash`].
    pub record_hash: String,
    /// See [`AuditEvent::record_key`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_key: Option<String>,
    /// The previous entry's [`AuditEntry::hash`] (64 zeros for the first entry).
    pub prev_hash: String,
    /// [`entry_hash`] of this entry.
    pub hash: String,
}

impl AuditEntry {
    /// Whether it records a signed record (rather than a local action).
    pub fn is_record(&self) -> bool {
        self.record_key.is_some()
    }
}

/// Which entries [`audit_entries`] returns; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only entries appended at or after this time, Unix milliseconds.
    pub since_ms: Option<u64>,
    /// Only entries about this org.
    pub org: Option<String>,
    /// Only entries of this kind: exact (`node`, `invite.used`) or a prefix ending in a dot
    /// (`chain.`, `tombstone.`).
    pub kind: Option<String>,
    /// At most this many entries (capped at [`MAX_READ`]; `None`: [`MAX_READ`]).
    pub limit: Option<usize>,
}

impl AuditFilter {
    fn matches(&self, e: &AuditEntry) -> bool {
        self.since_ms.is_none_or(|t| e.time_ms >= t)
            && self.org.as_ref().is_none_or(|o| *o == e.org)
            && self.kind.as_ref().is_none_or(|k| {
                *k == e.kind || (k.ends_with('.') && e.kind.starts_with(k.as_str()))
            })
    }
}

/// A break in the audit trail found by [`verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The stored hash is not the hash of the entry's fields: the entry was changed.
    #[error(
        "audit entry {seq} was altered: its fields do not hash to its stored hash; restore the store from a backup or rebuild it with `fedgw store rebuild`"
    )]
    Altered {
        /// The entry.
        seq: u64,
    },
    /// The entry does not name its predecessor's hash: an entry was removed, replaced or moved.
    #[error(
        "audit entry {seq} does not follow entry {prev}: an entry was removed or replaced; restore the store from a backup"
    )]
    Broken {
        /// The entry.
        seq: u64,
        /// Its predecessor.
        prev: u64,
    },
    /// The key under which the entry is stored differs from its sequence number.
    #[error("audit entry stored under {key} claims sequence number {seq}: the table was edited")]
    Misplaced {
        /// The table key.
        key: u64,
        /// The entry's own number.
        seq: u64,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex of a hash.
pub fn hex32(hash: &[u8; 32]) -> String {
    hex(hash)
}

/// The hash of an entry: SHA-256 over `fedgw-audit-v1`, then every field but `hash` in
/// declaration order, each length-prefixed (8 bytes big-endian; numbers as 8 bytes
/// big-endian; an absent record key as the empty string).
pub fn entry_hash(e: &AuditEntry) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"fedgw-audit-v1");
    h.update(e.seq.to_be_bytes());
    h.update(e.time_ms.to_be_bytes());
    for part in [
        e.kind.as_str(),
        e.org.as_str(),
        e.subject.as_str(),
        e.signer.as_str(),
        e.record_hash.as_str(),
        e.record_key.as_deref().unwrap_or(""),
        e.prev_hash.as_str(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex(&h.finalize())
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Appends `events` to the trail inside `tx` (the caller commits), stamped `now_ms`.
pub(super) fn append(
    tx: &WriteTransaction,
    events: &[AuditEvent],
    now_ms: u64,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut table = tx.open_table(AUDIT)?;
    let (mut seq, mut prev) = match table.last()? {
        Some((k, v)) => {
            let last: AuditEntry = decode(&format!("audit/{}", k.value()), v.value())?;
            (last.seq, last.hash)
        }
        None => (0, GENESIS.to_owned()),
    };
    for ev in events {
        seq += 1;
        let mut entry = AuditEntry {
            seq,
            time_ms: now_ms,
            kind: ev.kind.clone(),
            org: ev.org.clone(),
            subject: ev.subject.clone(),
            signer: ev.signer.clone(),
            record_hash: hex(&ev.record_hash),
            record_key: ev.record_key.clone(),
            prev_hash: prev,
            hash: String::new(),
        };
        entry.hash = entry_hash(&entry);
        table.insert(seq, encode(&entry).as_slice())?;
        prev = entry.hash;
    }
    Ok(())
}

/// Carries a salvaged trail into a fresh store (`fedgw store rebuild`) inside `tx`: the
/// entries as they were, then a `restored` entry (signer `store`) for each salvaged record that
/// no entry names (the trail was lost or cut short), so `--verify` accounts for every record.
pub(super) fn restore(tx: &WriteTransaction, s: &super::Salvage) -> Result<(), StoreError> {
    let entries = s.audit.as_deref().unwrap_or_default();
    {
        let mut table = tx.open_table(AUDIT)?;
        for (k, e) in entries {
            table.insert(*k, encode(e).as_slice())?;
        }
    }
    let named: std::collections::HashSet<&str> = entries
        .iter()
        .map(|(_, e)| e.record_hash.as_str())
        .collect();
    let missing: Vec<AuditEvent> = s
        .records
        .iter()
        .flatten()
        .filter_map(|(key, bytes)| {
            let hash: [u8; 32] = sha2::Sha256::digest(bytes).into();
            if named.contains(hex(&hash).as_str()) {
                return None;
            }
            let mut parts = key.splitn(3, '/');
            let (_, org, name) = (parts.next()?, parts.next()?, parts.next()?);
            Some(AuditEvent {
                kind: "restored".to_owned(),
                org: org.to_owned(),
                subject: name.to_owned(),
                signer: "store".to_owned(),
                record_hash: hash,
                record_key: Some(key.clone()),
            })
        })
        .collect();
    append(tx, &missing, now_ms())
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Checks a whole trail, oldest first: each entry's hash, and that it names its predecessor's.
/// Returns the number of entries checked, or the first break.
pub fn verify_chain<'a>(
    entries: impl IntoIterator<Item = (u64, &'a AuditEntry)>,
) -> Result<u64, ChainError> {
    let mut prev: Option<&AuditEntry> = None;
    let mut n = 0;
    for (key, e) in entries {
        if key != e.seq {
            return Err(ChainError::Misplaced { key, seq: e.seq });
        }
        if entry_hash(e) != e.hash {
            return Err(ChainError::Altered { seq: e.seq });
        }
        let (want_seq, want_prev) = prev.map_or((1, GENESIS), |p| (p.seq + 1, p.hash.as_str()));
        if e.seq != want_seq || e.prev_hash != want_prev {
            return Err(ChainError::Broken {
                seq: e.seq,
                prev: want_seq.saturating_sub(1),
            });
        }
        prev = Some(e);
        n += 1;
    }
    Ok(n)
}

/// The entries of `store` that `filter` selects, newest first: the library call behind
/// `fedgw audit` (and the web console). Errors: the store's, or [`StoreError::Corrupt`] for an
/// entry that does not decode.
pub fn audit_entries(store: &Store, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
    let limit = filter.limit.unwrap_or(MAX_READ).min(MAX_READ);
    let tx = store.db.begin_read()?;
    let table = tx.open_table(AUDIT)?;
    let mut out = Vec::new();
    for row in table.iter()?.rev() {
        if out.len() >= limit {
            break;
        }
        let (k, v) = row?;
        let e: AuditEntry = decode(&format!("audit/{}", k.value()), v.value())?;
        if filter.since_ms.is_some_and(|t| e.time_ms < t) {
            // entries are appended in time order (a clock step back aside): nothing older matches
            break;
        }
        if filter.matches(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

/// Most records an audit digest lists one by one (the digest itself covers all): at most about
/// 170 bytes each on the wire, so the answer stays under the 1 MiB message limit.
pub const MAX_DIGEST_RECORDS: usize = 5_000;

/// The order-independent digest of the records a gateway holds (`fedgw audit --compare`):
/// SHA-256 over the sorted SHA-256 hashes of the stored envelopes, each of which an audit
/// entry names. Two gateways holding the same records agree, whatever order they came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsDigest {
    /// The digest.
    pub digest: [u8; 32],
    /// Every record: key → SHA-256 of its envelope.
    pub records: std::collections::BTreeMap<String, [u8; 32]>,
}

impl RecordsDigest {
    /// The digest of `records` (key, envelope bytes).
    pub fn of(records: &[(String, Vec<u8>)]) -> Self {
        let records: std::collections::BTreeMap<String, [u8; 32]> = records
            .iter()
            .map(|(k, b)| (k.clone(), sha2::Sha256::digest(b).into()))
            .collect();
        Self::from_hashes(records)
    }

    /// The digest of already hashed records.
    pub fn from_hashes(records: std::collections::BTreeMap<String, [u8; 32]>) -> Self {
        let mut hashes: Vec<&[u8; 32]> = records.values().collect();
        hashes.sort();
        let mut h = sha2::Sha256::new();
        for x in hashes {
            h.update(x);
        }
        Self {
            digest: h.finalize().into(),
            records,
        }
    }

    /// The records that differ from `other`'s: (key, ours, theirs), `None` where a side lacks
    /// the record; sorted by key.
    pub fn differences(&self, other: &Self) -> Vec<RecordDifference> {
        let keys: std::collections::BTreeSet<&String> =
            self.records.keys().chain(other.records.keys()).collect();
        keys.into_iter()
            .filter_map(|k| {
                let (ours, theirs) = (self.records.get(k), other.records.get(k));
                (ours != theirs).then(|| RecordDifference {
                    key: k.clone(),
                    ours: ours.map(hex32),
                    theirs: theirs.map(hex32),
                })
            })
            .collect()
    }
}

/// One record two gateways hold differently ([`RecordsDigest::differences`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordDifference {
    /// The record's key, `kind/org/name`.
    pub key: String,
    /// Our envelope's hash, hex (`None`: we lack it).
    pub ours: Option<String>,
    /// Theirs (`None`: they lack it).
    pub theirs: Option<String>,
}

impl Store {
    /// Starts the trail of a store written before it (records, no entries): one `restored`
    /// entry per record, in one transaction, so that `fedgw audit --verify` accounts for them.
    /// Does nothing (and writes nothing) when the trail has entries or there are no records.
    pub(super) fn adopt_unrecorded(&self) -> Result<(), StoreError> {
        {
            let rx = self.db.begin_read()?;
            if !rx.open_table(AUDIT)?.is_empty()? || rx.open_table(super::RECORDS)?.is_empty()? {
                return Ok(());
            }
        }
        let salvage = super::Salvage {
            records: Some(self.records()?),
            ..Default::default()
        };
        let tx = self.db.begin_write()?;
        restore(&tx, &salvage)?;
        tx.commit()?;
        Ok(())
    }

    /// The digest of the records this store holds ([`RecordsDigest`]).
    pub fn records_digest(&self) -> Result<RecordsDigest, StoreError> {
        Ok(RecordsDigest::of(&self.records()?))
    }

    /// Appends local actions to the audit trail in one transaction (fsynced on commit).
    pub fn append_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        append(&tx, events, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// Every audit entry, oldest first, with the key it is stored under.
    pub fn audit_all(&self) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(AUDIT)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((
                k.value(),
                decode(&format!("audit/{}", k.value()), v.value())?,
            ));
        }
        Ok(out)
    }

    /// Overwrites one stored entry as it is given (tests of tamper detection).
    #[cfg(test)]
    pub(crate) fn overwrite_audit(&self, key: u64, e: &AuditEntry) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(AUDIT)?.insert(key, encode(e).as_slice())?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
