//! Rate limit on join attempts per token id: a token bucket per id (burst [`BURST`], one more
//! attempt every [`REFILL`]), in a map bounded to [`MAX_TRACKED`] ids. Checked before the token
//! is looked up, so unknown ids are limited too. When the map is full of active buckets, new ids
//! are refused (fail closed) rather than evicting a bucket an attacker is draining.

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
    /// Takes one attempt for `token_id` at `now`; false when the id is out of attempts.
    pub fn try_acquire(&self, token_id: &str, now: Instant) -> bool {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(token_id) && map.len() >= MAX_TRACKED {
            // forget ids whose buckets have refilled: they carry no information
            map.retain(|_, b| b.level(now) < BURST);
            if map.len() >= MAX_TRACKED {
                return false;
            }
        }
        let bucket = map.entry(token_id.to_owned()).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        let level = bucket.level(now);
        if level < 1.0 {
            return false;
        }
        *bucket = Bucket {
            tokens: level - 1.0,
            at: now,
        };
        true
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
    fn bounded_and_fails_closed() {
        let l = JoinLimiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED {
            assert!(l.try_acquire(&format!("{i}"), t0));
        }
        assert!(!l.try_acquire("new", t0), "full of active buckets");
        // once the others refill they are forgotten and new ids get room
        assert!(l.try_acquire("new", t0 + REFILL));
        assert!(l.buckets.lock().expect("lock").len() <= 1);
    }
}
