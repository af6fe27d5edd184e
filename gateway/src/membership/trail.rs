//! `fedgw audit --verify`: the audit trail checked against itself and against the records it
//! names. The hash chain must be whole ([`crate::store::audit::verify_chain`]); every stored
//! record must be named by an audit entry with its envelope's hash (a record changed in the
//! store file is not), and its envelope must still verify (signature, signer, fields:
//! [`super::record::verify`]).

use std::collections::HashMap;
use std::time::SystemTime;

use fedgw_certs::envelope::SignerVerifier;

use crate::store::audit::{ChainError, hex32, verify_chain};
use crate::store::{Store, StoreError};

/// What [`verify_trail`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailReport {
    /// Audit entries whose chain was checked.
    pub entries: u64,
    /// Stored records whose envelope was re-verified and found in the trail.
    pub records: usize,
}

/// Why the trail or the records fail the check; each message names the entry or record.
#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    /// The store could not be read.
    #[error("reading the store failed")]
    Store(#[from] StoreError),
    /// The hash chain is broken.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A stored record's bytes are in no audit entry: it was changed or added outside fedgw.
    #[error(
        "record {key} was changed in the store: no audit entry has its hash {hash}; rebuild the store with `fedgw store rebuild`"
    )]
    Unrecorded {
        /// The record's store key.
        key: String,
        /// SHA-256 of the stored envelope, hex.
        hash: String,
    },
    /// A stored record's envelope no longer verifies.
    #[error(
        "record {key} (audit entry {seq}) fails verification: {reason}; rebuild the store with `fedgw store rebuild`"
    )]
    BadSignature {
        /// The record's store key.
        key: String,
        /// The audit entry that names it.
        seq: u64,
        /// Why it fails.
        reason: super::record::Reject,
    },
}

/// Checks the audit trail of `store` and every stored record it names, at `now`, with signers
/// verified against `verifier` (the consortium root) for `domain`.
pub fn verify_trail(
    store: &Store,
    verifier: SignerVerifier,
    domain: &str,
    now: SystemTime,
) -> Result<TrailReport, TrailError> {
    use sha2::Digest;
    let all = store.audit_all()?;
    let entries = verify_chain(all.iter().map(|(k, e)| (*k, e)))?;
    // the newest entry per record hash
    let by_hash: HashMap<&str, u64> = all
        .iter()
        .filter(|(_, e)| e.is_record())
        .map(|(_, e)| (e.record_hash.as_str(), e.seq))
        .collect();
    let lookup = (verifier, now);
    let records = store.records()?;
    for (key, bytes) in &records {
        let hash = hex32(&sha2::Sha256::digest(bytes).into());
        let Some(seq) = by_hash.get(hash.as_str()) else {
            return Err(TrailError::Unrecorded {
                key: key.clone(),
                hash,
            });
        };
        super::record::verify(bytes, &lookup, domain).map_err(|reason| {
            TrailError::BadSignature {
                key: key.clone(),
                seq: *seq,
                reason,
            }
        })?;
    }
    Ok(TrailReport {
        entries,
        records: records.len(),
    })
}

#[cfg(test)]
mod tests;
