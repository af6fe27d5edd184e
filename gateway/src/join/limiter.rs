//! Rate limit on failed join attempts per token id: a token bucket per id (burst [`BURST`]
//! failures, one more every [`REFILL`]), in a map bounded to [`MAX_TRACKED`] ids. Checked before
//! the token is looked up, so unknown ids are limited too; only refusals are charged, so a joiner
//! waiting for approvals can keep asking. When the map is full of active buckets, new ids are
//! refused (fail closed) rather than evicting a bucket an attacker is draining.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Attempts allowed in a burst per token id.
pub const BURST: f64 = 5.0;
/// Time for one attempt to come back.
pub const REFILL: Duration = Duration::from_secs(12);
/// Most token ids tracked at once.
pub const MAX_TRACKED: usize = 4096;

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
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl JoinLimiter {
    /// Whether `token_id` may make an attempt at `now` (it has failures left).
    pub fn allowed(&self, token_id: &str, now: Instant) -> bool {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(token_id) {
            Some(b) => b.level(now) >= 1.0,
            None if map.len() < MAX_TRACKED => true,
            None => {
                // forget ids whose buckets have refilled: they carry no information
                map.retain(|_, b| b.level(now) < BURST);
                map.len() < MAX_TRACKED
            }
        }
    }

    /// Charges one failed attempt to `token_id`.
    pub fn charge(&self, token_id: &str, now: Instant) {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(token_id) && map.len() >= MAX_TRACKED {
            map.retain(|_, b| b.level(now) < BURST);
            if map.len() >= MAX_TRACKED {
                return;
            }
        }
        let bucket = map.entry(token_id.to_owned()).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        let level = bucket.level(now);
        *bucket = Bucket {
            tokens: (level - 1.0).max(0.0),
            at: now,
        };
    }

    /// [`Self::allowed`], then charge: one attempt that counts whatever its outcome.
    #[cfg(test)]
    fn try_acquire(&self, token_id: &str, now: Instant) -> bool {
        let ok = self.allowed(token_id, now);
        if ok {
            self.charge(token_id, now);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let l = JoinLimiter::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.try_acquire("a", t0));
        }
        assert!(!l.try_acquire("a", t0));
        assert!(l.try_acquire("b", t0), "ids are limited separately");
        assert!(!l.try_acquire("a", t0 + REFILL / 2));
        assert!(l.try_acquire("a", t0 + REFILL));
        assert!(!l.try_acquire("a", t0 + REFILL));
    }

    #[test]
    fn only_charged_attempts_count() {
        let l = JoinLimiter::default();
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(l.allowed("a", t0), "asking without failing is free");
        }
        for _ in 0..5 {
            l.charge("a", t0);
        }
        assert!(!l.allowed("a", t0));
    }

    #[test]
    fn bounded_and_fails_closed() {
        let l = JoinLimiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED {
            assert!(l.try_acquire(&format!("{i}"), t0));
        }
        assert!(!l.allowed("new", t0), "full of active buckets");
        // once the others refill they are forgotten and new ids get room
        assert!(l.allowed("new", t0 + REFILL));
        assert!(l.try_acquire("new", t0 + REFILL));
        assert!(l.buckets.lock().expect("lock").len() <= 1);
    }
}
