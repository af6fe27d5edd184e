//! `auto` transport: back to QUIC in the background (docs/DESIGN.md section 8).
//!
//! In `auto` a dial falls back to TCP+TLS when QUIC does not connect within
//! [`AUTO_QUIC_TIMEOUT`](super::AUTO_QUIC_TIMEOUT) and TCP+TLS does. The gateway that dialled
//! such a link keeps trying QUIC for as long as the link lives, on a backoff schedule
//! ([`retry_delay`]: the first retry within 60 s, then doubling up to about ten minutes,
//! jittered). When QUIC connects, the QUIC link takes every new stream and the TCP+TLS link
//! drains: it keeps the streams it carries until they end, then closes
//! ([`Links::drain`]). Both ends agree without a message of their own: a QUIC link
//! registered for a peer drains that peer's TCP+TLS links at either end ([`drains`]),
//! whichever side dialled.
//!
//! ```text
//!  dial: QUIC fails, TCP+TLS works ─▶ Failures { count: 1, at, retry_at }
//!        │                               │ retry_delay(count): 22.5-37.5 s, 45-75 s, …, ≤ 12.5 min
//!        ▼                               ▼
//!  TCP+TLS link ◀── streams        background: dial QUIC ── fails ─▶ count + 1
//!        │                               │ connects
//!        ▼                               ▼
//!  drains: no new streams, ◀──── QUIC link registered (both ends), new streams use it
//!  closed when its last ends
//! ```
//!
//! The schedule and the per-peer record are pure and tested without sockets; the task that
//! sleeps and dials is [`Links::upgrade_later`].

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info};

use super::{AUTO_QUIC_TIMEOUT, DialError, Link, LinkEntry, Links, Transport};
use crate::membership::GatewayId;

/// Wait after the first failed QUIC attempt before the next (then doubled per failure), before
/// [`RETRY_JITTER`].
pub const RETRY_FIRST: Duration = Duration::from_secs(30);

/// Longest wait between QUIC attempts, before [`RETRY_JITTER`]: an attempt costs a few UDP
/// packets for at most [`AUTO_QUIC_TIMEOUT`](super::AUTO_QUIC_TIMEOUT).
pub const RETRY_MAX: Duration = Duration::from_secs(600);

/// Each wait is scaled by a factor drawn from this range, so gateways that lost UDP together
/// do not retry in step.
pub const RETRY_JITTER: Range<f64> = 0.75..1.25;

/// How often a draining TCP+TLS link counts its streams. The first count comes this long
/// after the QUIC link registered, which gives the peer time to register it too (from then on
/// it opens no stream on the old link either).
pub const DRAIN_CHECK: Duration = Duration::from_secs(1);

/// Wait before the next QUIC attempt after `failures` (≥ 1) failed in a row: [`RETRY_FIRST`]
/// doubled per earlier failure, at most [`RETRY_MAX`], scaled by `jitter` (clamped to
/// [`RETRY_JITTER`]; NaN counts as 1). The first wait is at most 37.5 s, the longest 12.5 min.
pub fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX);
    let jitter = if jitter.is_nan() {
        1.0
    } else {
        jitter.clamp(RETRY_JITTER.start, RETRY_JITTER.end)
    };
    base.mul_f64(jitter)
}

/// Whether registering `new` drains `old`, a link to the same peer: a QUIC link drains every
/// TCP+TLS link, whichever side dialled either. Other links a new one replaces are superseded
/// or kept as [`Links::register`] says.
pub(super) fn drains(new: &Link, old: &Link) -> bool {
    matches!((new, old), (Link::Quic(_), Link::Mux { .. }))
}

/// QUIC attempts to one peer that failed in a row while TCP+TLS worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failures {
    /// How many (≥ 1).
    pub count: u32,
    /// When the last one failed.
    pub at: SystemTime,
    /// When QUIC is tried next.
    pub retry_at: Instant,
}

/// Why a link is on TCP+TLS, as `fedgw status` shows it: when QUIC last failed and when this
/// gateway tries it again (wall-clock times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicFailed {
    /// When the last QUIC attempt failed.
    pub at: SystemTime,
    /// When the next one is due (now or earlier: under way).
    pub retry_at: SystemTime,
}

/// Per peer, the QUIC attempts that failed, and the test hook that fails every QUIC dial.
#[derive(Debug, Default)]
pub(super) struct Upgrades {
    failures: Mutex<HashMap<GatewayId, Failures>>,
    /// [`Links::block_quic_dials`].
    blocked: AtomicBool,
    /// Wakes the background tasks when a retry became due early (the test hook only).
    due: Notify,
}

impl Upgrades {
    /// Whether a dial to `peer` at `now` tries QUIC first: no attempt failed, or the next one is
    /// due.
    pub(super) fn due(&self, peer: &GatewayId, now: Instant) -> bool {
        self.get(peer).is_none_or(|f| now >= f.retry_at)
    }

    /// Records a failed QUIC attempt to `peer` at `now` (`wall` on the clock status shows),
    /// while TCP+TLS worked, and returns the record with the next attempt
    /// ([`retry_delay`] with `jitter`).
    pub(super) fn failed(
        &self,
        peer: &GatewayId,
        now: Instant,
        wall: SystemTime,
        jitter: f64,
    ) -> Failures {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.get(peer).map_or(1, |f| f.count.saturating_add(1));
        let record = Failures {
            count,
            at: wall,
            retry_at: now + retry_delay(count, jitter),
        };
        failures.insert(peer.clone(), record);
        record
    }

    /// [`Upgrades::failed`] now, with a random jitter from [`RETRY_JITTER`].
    pub(super) fn failed_now(&self, peer: &GatewayId) -> Failures {
        let jitter = rand::random_range(RETRY_JITTER);
        self.failed(peer, Instant::now(), SystemTime::now(), jitter)
    }

    /// QUIC connected to `peer`: the count starts anew at the next failure.
    pub(super) fn connected(&self, peer: &GatewayId) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
    }

    /// The failures recorded for `peer`.
    pub(super) fn get(&self, peer: &GatewayId) -> Option<Failures> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .copied()
    }

    /// `peer`'s record on the wall clock, `now` and `wall` being the same moment.
    pub(super) fn status(
        &self,
        peer: &GatewayId,
        now: Instant,
        wall: SystemTime,
    ) -> Option<QuicFailed> {
        self.get(peer).map(|f| QuicFailed {
            at: f.at,
            retry_at: wall + f.retry_at.saturating_duration_since(now),
        })
    }

    /// Fails QUIC dials while the hook is set ([`Links::block_quic_dials`]).
    pub(super) fn check_blocked(&self) -> Result<(), DialError> {
        if self.blocked.load(Ordering::Acquire) {
            return Err(DialError::QuicBlocked);
        }
        Ok(())
    }

    /// Sets the test hook; lifting it makes every retry due at `now` and wakes the tasks that
    /// wait for one.
    fn block(&self, blocked: bool, now: Instant) {
        self.blocked.store(blocked, Ordering::Release);
        if !blocked {
            for f in self
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values_mut()
            {
                f.retry_at = f.retry_at.min(now);
            }
            self.due.notify_waiters();
        }
    }
}

/// What one background QUIC attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Attempt {
    /// QUIC connected and its link registered.
    Upgraded,
    /// QUIC did not connect (why).
    Failed(String),
    /// Nothing to upgrade any more: the TCP+TLS link is gone or no longer the peer's link.
    Stop,
}

/// Runs `attempt` each time `peer`'s next QUIC attempt is due, recording every failure in
/// `upgrades` (which moves the next one out), until an attempt upgrades or stops; returns that
/// outcome. A peer with no record is due at once.
pub(super) async fn retry<F, Fut>(upgrades: &Upgrades, peer: &GatewayId, mut attempt: F) -> Attempt
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    loop {
        let due = upgrades.due.notified();
        let mut due = std::pin::pin!(due);
        // registered before the record is read, so an early retry set meanwhile wakes it
        due.as_mut().enable();
        if let Some(at) = upgrades.get(peer).map(|f| f.retry_at)
            && Instant::now() < at
        {
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = due => {}
            }
            // the record may have moved meanwhile (a dial that failed QUIC again)
            continue;
        }
        match attempt().await {
            Attempt::Failed(e) => {
                let next = upgrades.failed_now(peer);
                debug!(%peer, error = %e, failures = next.count, "QUIC still does not connect; staying on TCP+TLS");
            }
            done => return done,
        }
    }
}

/// Waits until `streams()` counts none, checked every [`DRAIN_CHECK`] from one period after
/// the call.
pub(super) async fn drained(streams: impl Fn() -> usize) {
    let mut check = tokio::time::interval_at(Instant::now() + DRAIN_CHECK, DRAIN_CHECK);
    loop {
        check.tick().await;
        if streams() == 0 {
            return;
        }
    }
}

impl Links {
    /// After `entry`, a TCP+TLS link this side dialled to `peer`, registered in `auto` with a
    /// QUIC endpoint: tries QUIC again in the background ([`retry`]) while the link is `peer`'s
    /// link, and registers the QUIC link once it connects. Anything else: nothing to do.
    pub(super) fn upgrade_later(&self, peer: &GatewayId, entry: &LinkEntry) {
        if self.0.transport != Transport::Auto
            || self.0.quic.is_none()
            || !matches!(entry.link, Link::Mux { .. })
        {
            return;
        }
        let this = self.clone();
        let (peer, tcp) = (peer.clone(), entry.clone());
        self.0.tracker.spawn(async move {
            let revoked = this.0.membership.revocation().token(&peer.org);
            let attempts = retry(&this.0.upgrades, &peer, || this.try_quic(&peer, tcp.id));
            tokio::select! {
                _ = attempts => {}
                // the next dial decides the transport
                () = tcp.link.closed() => {}
                () = revoked.cancelled() => {}
                () = this.0.shutdown.cancelled() => {}
            }
        });
    }

    /// One background QUIC attempt to `peer`, whose link is TCP+TLS link `tcp` (or nothing is
    /// done), under the peer's dial lock as [`Links::dial`] takes it.
    async fn try_quic(&self, peer: &GatewayId, tcp: u64) -> Attempt {
        let lock = self.dial_lock(peer);
        let _one_dial = lock.lock().await;
        // replaced meanwhile: by the peer's QUIC link, or by a newer link with a task of its own
        if self.registered_link(peer, true).is_none_or(|e| e.id != tcp) {
            return Attempt::Stop;
        }
        let Some(gw) = self.peer_gateway(peer) else {
            return Attempt::Stop;
        };
        let mut errors = vec![];
        for endpoint in &gw.advertise {
            // the time a dial in `auto` gives QUIC: a path where QUIC takes longer stays on TCP
            match tokio::time::timeout(AUTO_QUIC_TIMEOUT, self.dial_quic(peer, endpoint)).await {
                Ok(Ok(link)) => {
                    self.0.upgrades.connected(peer);
                    info!(%peer, "QUIC connects again; moving the tunnel off TCP+TLS");
                    self.register(peer.clone(), link, "outbound");
                    return Attempt::Upgraded;
                }
                Ok(Err(e)) => errors.push(format!("{endpoint}: {e}")),
                Err(_) => errors.push(format!("{endpoint}: QUIC handshake timed out")),
            }
        }
        Attempt::Failed(errors.join("; "))
    }

    /// Lets link `id` to `peer`, a TCP+TLS link that a newer link replaced (a QUIC link, or a
    /// newer consensus side link), carry its streams until they end, then closes it; new
    /// streams take the newer link.
    pub(super) fn drain(&self, peer: &GatewayId, id: u64, link: Link) {
        let Link::Mux { mux, .. } = &link else {
            return;
        };
        let mux = mux.clone();
        info!(%peer, link = id, streams = mux.streams(), "a newer link took over; this TCP+TLS link closes once its streams end");
        let peer = peer.clone();
        self.0.tracker.spawn(async move {
            tokio::select! {
                () = drained(|| mux.streams()) => {
                    debug!(%peer, link = id, "TCP+TLS link drained; closing it");
                    link.close(5, "drained");
                }
                () = link.closed() => {}
            }
        });
    }

    /// Resolves once `peer`'s registered link is a live one other than link `id` (a QUIC link
    /// that replaced a kept TCP+TLS one, or a newer link from the peer).
    pub(super) async fn replaced(&self, peer: &GatewayId, id: u64) {
        let mut registered = self.0.link_up.subscribe();
        loop {
            registered.mark_unchanged();
            if self.registered_link(peer, true).is_some_and(|e| e.id != id) {
                return;
            }
            if registered.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Why `entry`, `peer`'s link, is on TCP+TLS, if this side dialled it after QUIC failed.
    pub(super) fn quic_failed(&self, peer: &GatewayId, entry: &LinkEntry) -> Option<QuicFailed> {
        if !entry.outbound || !matches!(entry.link, Link::Mux { .. }) {
            return None;
        }
        self.0
            .upgrades
            .status(peer, Instant::now(), SystemTime::now())
    }

    /// Test hook, not for production: while `blocked`, every QUIC dial of this gateway fails at
    /// once, as if UDP were blocked on the path; lifting it makes every background QUIC retry
    /// due at once, so a test need not wait out the schedule.
    #[doc(hidden)]
    pub fn block_quic_dials(&self, blocked: bool) {
        self.0.upgrades.block(blocked, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn peer() -> GatewayId {
        GatewayId::new("org2", "dc1")
    }

    #[test]
    fn the_first_retry_comes_within_a_minute_and_later_ones_back_off_to_a_cap() {
        let s = Duration::from_secs;
        // the jitter's ends: first retry 22.5 s to 37.5 s after the failure
        assert_eq!(retry_delay(1, RETRY_JITTER.start), s(30).mul_f64(0.75));
        assert_eq!(retry_delay(1, RETRY_JITTER.end), s(30).mul_f64(1.25));
        assert!(retry_delay(1, f64::MAX) < s(60));
        assert_eq!(retry_delay(1, 1.0), s(30));
        assert_eq!(retry_delay(2, 1.0), s(60));
        assert_eq!(retry_delay(3, 1.0), s(120));
        assert_eq!(retry_delay(5, 1.0), s(480));
        assert_eq!(retry_delay(6, 1.0), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX, 1.0), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX, f64::MAX), RETRY_MAX.mul_f64(1.25));
        // a jitter that is not a number counts as none
        assert_eq!(retry_delay(1, f64::NAN), s(30));
        // 0 counts as the first failure
        assert_eq!(retry_delay(0, 1.0), s(30));
    }

    #[test]
    fn failures_count_up_move_the_retry_out_and_clear_when_quic_connects() {
        let u = Upgrades::default();
        let p = peer();
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(u.due(&p, t0), "never failed: QUIC first");
        let first = u.failed(&p, t0, wall, 1.0);
        assert_eq!(first.count, 1);
        assert_eq!(first.retry_at, t0 + Duration::from_secs(30));
        assert!(!u.due(&p, t0 + Duration::from_secs(29)));
        assert!(u.due(&p, t0 + Duration::from_secs(30)));
        let t1 = t0 + Duration::from_secs(30);
        let second = u.failed(&p, t1, wall + Duration::from_secs(30), 1.0);
        assert_eq!(second.count, 2);
        assert_eq!(second.retry_at, t1 + Duration::from_secs(60));
        // status: the wall-clock time of the failure, and of the retry as seen at t1 + 10 s
        let status = u
            .status(
                &p,
                t1 + Duration::from_secs(10),
                wall + Duration::from_secs(40),
            )
            .expect("a record");
        assert_eq!(status.at, wall + Duration::from_secs(30));
        assert_eq!(status.retry_at, wall + Duration::from_secs(90));
        // another peer is untouched
        let other = GatewayId::new("org3", "dc1");
        assert!(u.due(&other, t1) && u.status(&other, t1, wall).is_none());
        u.connected(&p);
        assert!(u.due(&p, t1) && u.get(&p).is_none());
        assert_eq!(u.failed(&p, t1, wall, 1.0).count, 1, "counted anew");
    }

    #[test]
    fn the_hook_fails_quic_dials_until_lifted_and_lifting_makes_retries_due() {
        let u = Upgrades::default();
        let p = peer();
        let t0 = Instant::now();
        u.block(true, t0);
        assert!(u.check_blocked().is_err());
        u.failed(&p, t0, SystemTime::UNIX_EPOCH, 1.0);
        assert!(!u.due(&p, t0 + Duration::from_secs(1)));
        u.block(false, t0 + Duration::from_secs(1));
        assert!(u.check_blocked().is_ok());
        assert!(u.due(&p, t0 + Duration::from_secs(1)));
    }

    /// Attempt times, relative to the start, of a [`retry`] loop whose attempts fail `fails`
    /// times and then upgrade.
    async fn attempt_times(u: &Upgrades, fails: usize) -> Vec<Duration> {
        let start = Instant::now();
        let times = Arc::new(Mutex::new(vec![]));
        let n = AtomicUsize::new(0);
        let outcome = retry(u, &peer(), || {
            let times = times.clone();
            let i = n.fetch_add(1, Ordering::Relaxed);
            async move {
                times.lock().expect("times").push(start.elapsed());
                if i < fails {
                    Attempt::Failed("no UDP".into())
                } else {
                    Attempt::Upgraded
                }
            }
        })
        .await;
        assert_eq!(outcome, Attempt::Upgraded);
        let mut out = vec![];
        std::mem::swap(&mut out, &mut times.lock().expect("times"));
        out
    }

    #[tokio::test(start_paused = true)]
    async fn background_attempts_follow_the_schedule_until_quic_connects() {
        let u = Upgrades::default();
        // the dial that fell back to TCP+TLS recorded the first failure
        u.failed(&peer(), Instant::now(), SystemTime::now(), 1.0);
        let times = attempt_times(&u, 2).await;
        assert_eq!(times.len(), 3, "{times:?}");
        let s = Duration::from_secs;
        // exactly on the first record's time, then with the jittered delays of failures 2 and 3
        assert_eq!(times[0], s(30));
        let second = times[1] - times[0];
        assert!(
            second >= s(60).mul_f64(0.75) && second <= s(60).mul_f64(1.25),
            "{times:?}"
        );
        let third = times[2] - times[1];
        assert!(
            third >= s(120).mul_f64(0.75) && third <= s(120).mul_f64(1.25),
            "{times:?}"
        );
        assert!(u.get(&peer()).is_some_and(|f| f.count == 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_made_due_early_runs_at_once_and_a_moved_record_is_respected() {
        let u = Arc::new(Upgrades::default());
        let t0 = Instant::now();
        u.failed(&peer(), t0, SystemTime::now(), 1.0);
        let task = tokio::spawn({
            let u = u.clone();
            async move { attempt_times(&u, 0).await }
        });
        // another dial fails QUIC meanwhile: the wait moves to its record (60 s after it)
        tokio::time::sleep(Duration::from_secs(10)).await;
        u.failed(&peer(), Instant::now(), SystemTime::now(), 1.0);
        tokio::time::sleep(Duration::from_secs(45)).await;
        assert!(
            !task.is_finished(),
            "the moved record is 60 s after the second failure"
        );
        // the hook lifted: due at once
        u.block(false, Instant::now());
        let times = tokio::time::timeout(Duration::from_millis(1), task)
            .await
            .expect("ran at once")
            .expect("task");
        assert_eq!(times, [Duration::from_secs(55)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_without_a_record_is_tried_at_once_and_stop_ends_the_loop() {
        let u = Upgrades::default();
        let outcome = retry(&u, &peer(), || async { Attempt::Stop }).await;
        assert_eq!(outcome, Attempt::Stop);
        assert_eq!(Instant::now().elapsed(), Duration::ZERO);
        assert!(u.get(&peer()).is_none(), "a stop is no failure");
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_link_closes_at_the_first_check_that_counts_no_streams() {
        let streams = Arc::new(AtomicUsize::new(2));
        let start = Instant::now();
        let task = tokio::spawn({
            let streams = streams.clone();
            async move { drained(|| streams.load(Ordering::Relaxed)).await }
        });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        streams.store(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!task.is_finished(), "a stream is still open");
        streams.store(0, Ordering::Relaxed);
        task.await.expect("task");
        // checks at 1 s, 2 s, …: the first after the last stream ended, 4.5 s in
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_with_no_streams_closes_one_check_after_the_upgrade() {
        let start = Instant::now();
        drained(|| 0).await;
        assert_eq!(start.elapsed(), DRAIN_CHECK);
    }
}
