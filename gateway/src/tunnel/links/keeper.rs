//! The schedule of a link keeper, the task that keeps a link up to one peer gateway (see
//! `Links::keep_links`): dial; hold the link until it closes, then redial after the backoff's
//! first delay, or until it retires at its [`link_age`](super::link_age), then redial at once
//! (the retired link keeps carrying its streams); after a failed dial, wait twice as long as
//! last time, up to the backoff's cap. Every wait has ±25 % jitter, so keepers that failed
//! together do not redial together.
//!
//! The dial and the link are parameters, so the schedule is tested on paused time without
//! sockets (`tunnel/links/keeper/tests.rs`).

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A link as the keeper holds it.
pub(super) trait Kept {
    /// Resolves when the link is closed.
    fn closed(&self) -> impl Future<Output = ()> + Send;
    /// When the link stops taking new streams.
    fn retire_at(&self) -> Instant;
}

/// Keeps a link up with `dial` until `stop` is cancelled or `revoked` says the peer's org was
/// revoked. `backoff` is the first delay and the cap; `failed` hears of each failed dial;
/// `replaced` resolves when another link took over from the one held (a QUIC link draining a
/// TCP+TLS one), which is then followed at once like a retired one.
pub(super) async fn keep<L, E, D, F, R>(
    mut dial: D,
    revoked: impl Fn() -> bool,
    stop: &CancellationToken,
    backoff: (Duration, Duration),
    failed: impl Fn(&E),
    replaced: impl Fn(&L) -> R,
) where
    L: Kept,
    D: FnMut() -> F,
    F: Future<Output = Result<L, E>>,
    R: Future<Output = ()>,
{
    let mut delay = backoff.0;
    loop {
        if revoked() {
            return;
        }
        let link = tokio::select! {
            l = dial() => l,
            () = stop.cancelled() => return,
        };
        match link {
            Ok(link) => {
                delay = backoff.0;
                tokio::select! {
                    () = link.closed() => {}
                    // a retired link keeps its streams; new ones need a new link now
                    () = tokio::time::sleep_until(link.retire_at()) => continue,
                    () = replaced(&link) => continue,
                    () = stop.cancelled() => return,
                }
            }
            Err(e) => {
                failed(&e);
                delay = (delay * 2).min(backoff.1);
            }
        }
        let jitter = rand::random_range(0.75..1.25);
        tokio::select! {
            () = tokio::time::sleep(delay.mul_f64(jitter)) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests;
