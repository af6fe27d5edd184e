//! Rate limit on failed join attempts per token id: a token bucket per id (burst [`BURST`]
//! failures, one more every [`REFILL`]), in a table of at most [`MAX_TRACKED`] entries.
//!
//! Keys are [`TokenId`]s, 8 bytes whatever a caller sent: a request whose id is not 16
//! lowercase hex digits is refused before it reaches the limiter, so the table is bounded in
//! bytes ([`MAX_TABLE_BYTES`]), not only in entries. Only refusals that tested the token's
//! secret against a stored invite are charged (see the join service): an id no invite has
//! costs the caller nothing to vary and tells it nothing, so it is never stored. A full table
//! never refuses a new id: it forgets the entry with the most attempts left (a refilled bucket
//! first), so no flood can lock a new token out, while an id being drained keeps its bucket.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use fedgw_certs::token::TokenId;

/// Attempts allowed in a burst per token id.
pub const BURST: f64 = 5.0;
/// Time for one attempt to come back.
pub const REFILL: Duration = Duration::from_secs(12);
/// Most token ids tracked at once.
pub const MAX_TRACKED: usize = 4096;
/// Upper bound of the table's heap size, in bytes: [`MAX_TRACKED`] entries of a fixed size,
/// with room for the hash table's spare capacity and control bytes (at most twice the entries
/// at its load factor, plus one control byte each).
pub const MAX_TABLE_BYTES: usize = 2 * MAX_TRACKED * (ENTRY_BYTES + 1);

const ENTRY_BYTES: usize = std::mem::size_of::<(TokenId, Bucket)>();

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn level(&self, now: Instant) -> f64 {
        let refilled = now.saturating_duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        (self.tokens + refilled).min(BURST)
    }
}

/// Per-token-id attempt limiter.
#[derive(Debug, Default)]
pub struct JoinLimiter {
    buckets: Mutex<HashMap<TokenId, Bucket>>,
}

impl JoinLimiter {
    /// Whether `id` may make an attempt at `now` (it has failures left). Never stores anything.
    pub fn allowed(&self, id: TokenId, now: Instant) -> bool {
        let map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&id).is_none_or(|b| b.level(now) >= 1.0)
    }

    /// Charges one failed attempt to `id`. When the table is full, the entry with the most
    /// attempts left makes room.
    pub fn charge(&self, id: TokenId, now: Instant) {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&id) && map.len() >= MAX_TRACKED {
            // refilled buckets carry no information
            map.retain(|_, b| b.level(now) < BURST);
            if map.len() >= MAX_TRACKED
                && let Some(fullest) = map
                    .iter()
                    .max_by(|a, b| a.1.level(now).total_cmp(&b.1.level(now)))
                    .map(|(k, _)| *k)
            {
                map.remove(&fullest);
            }
        }
        let bucket = map.entry(id).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        let level = bucket.level(now);
        *bucket = Bucket {
            tokens: (level - 1.0).max(0.0),
            at: now,
        };
    }

    /// Token ids tracked now.
    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no token id is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table's heap size now, in bytes (capacity × (entry + control byte)).
    pub fn table_bytes(&self) -> usize {
        let map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        map.capacity() * (ENTRY_BYTES + 1)
    }

    /// [`Self::allowed`], then charge: one attempt that counts whatever its outcome.
    #[cfg(test)]
    fn try_acquire(&self, id: TokenId, now: Instant) -> bool {
        let ok = self.allowed(id, now);
        if ok {
            self.charge(id, now);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> TokenId {
        TokenId::parse(&format!("{n:016x}")).expect("16 hex digits")
    }

    #[test]
    fn burst_then_refill() {
        let l = JoinLimiter::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.try_acquire(id(1), t0));
        }
        assert!(!l.try_acquire(id(1), t0));
        assert!(l.try_acquire(id(2), t0), "ids are limited separately");
        assert!(!l.try_acquire(id(1), t0 + REFILL / 2));
        assert!(l.try_acquire(id(1), t0 + REFILL));
        assert!(!l.try_acquire(id(1), t0 + REFILL));
    }

    #[test]
    fn only_charged_attempts_count() {
        let l = JoinLimiter::default();
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(l.allowed(id(1), t0), "asking without failing is free");
        }
        assert!(l.is_empty(), "asking stores nothing");
        for _ in 0..5 {
            l.charge(id(1), t0);
        }
        assert!(!l.allowed(id(1), t0));
    }

    #[test]
    fn a_flood_of_ids_stays_bounded_in_bytes_and_locks_no_new_id_out() {
        let l = JoinLimiter::default();
        let t0 = Instant::now();
        // an id under attack, drained
        for _ in 0..5 {
            l.charge(id(0), t0);
        }
        // far more distinct ids than the table holds, each charged once
        for n in 1..=(2 * MAX_TRACKED as u64) {
            l.charge(id(n), t0);
            assert!(l.len() <= MAX_TRACKED);
        }
        assert!(
            l.table_bytes() <= MAX_TABLE_BYTES,
            "{} > {MAX_TABLE_BYTES}",
            l.table_bytes()
        );
        const {
            assert!(MAX_TABLE_BYTES < 1 << 20);
            assert!(std::mem::size_of::<TokenId>() == 8);
        }
        // a new token is never refused for lack of room
        let fresh = id(u64::MAX);
        assert!(l.allowed(fresh, t0));
        l.charge(fresh, t0);
        assert!(l.allowed(fresh, t0), "four attempts left");
        // the drained id kept its bucket: the flood evicted fuller ones
        assert!(!l.allowed(id(0), t0));
        // once the others refill they are forgotten
        l.charge(id(1 << 40), t0 + REFILL);
        assert!(l.len() <= 2, "{}", l.len());
    }
}
