//! The controller's probe endpoints for its container's `livenessProbe` and `readinessProbe`:
//! `GET /livez` and `GET /readyz` over HTTP/1.1 (200 with `ok`, or 503).
//!
//! - `/livez`: the controller's loop has turned within [`Health::stale_after`] (it turns at
//!   least every poll period, 5 s by default, and on every watch event), so a loop stuck on
//!   something is restarted;
//! - `/readyz`: a latch, set once every watch has finished its first list and the gateway
//!   has answered (the index is ready), never cleared: a controller that lost the API server
//!   later keeps its pod ready (the gateway beside it still serves) and says so in its logs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Shared probe state: the run loop beats and latches, the HTTP server reads.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    start: Instant,
    /// Milliseconds after `start` of the last beat.
    beat_ms: AtomicU64,
    ready: AtomicBool,
    stale_after: Duration,
}

impl Health {
    /// Probe state whose `/livez` fails once the loop has not beaten for `stale_after`.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                start: Instant::now(),
                beat_ms: AtomicU64::new(0),
                ready: AtomicBool::new(false),
                stale_after,
            }),
        }
    }

    /// How long the loop may go without a beat before `/livez` fails.
    pub fn stale_after(&self) -> Duration {
        self.inner.stale_after
    }

    /// The loop turned.
    pub fn beat(&self) {
        let ms = u64::try_from(self.inner.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.beat_ms.store(ms, Ordering::Release);
    }

    /// The index is ready: `/readyz` answers 200 from now on.
    pub fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Whether `/livez` answers 200.
    pub fn live(&self) -> bool {
        let beat = Duration::from_millis(self.inner.beat_ms.load(Ordering::Acquire));
        self.inner.start.elapsed().saturating_sub(beat) < self.inner.stale_after
    }
}

fn answer(ok: bool) -> (StatusCode, &'static str) {
    if ok {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ok\n")
    }
}

/// Serves `/livez` and `/readyz` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/livez",
            get(|State(h): State<Health>| async move { answer(h.live()) }),
        )
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move { answer(h.ready()) }),
        )
        .with_state(health);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_status(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn readiness_is_a_latch_and_liveness_follows_the_loop() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = Health::new(Duration::from_secs(60));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, health.clone(), shutdown.clone()));
        let bounded = |f| tokio::time::timeout(Duration::from_secs(10), f);

        assert!(
            bounded(get_status(addr, "/readyz"))
                .await
                .expect("answer")
                .contains("503")
        );
        assert!(
            bounded(get_status(addr, "/livez"))
                .await
                .expect("answer")
                .contains("200")
        );
        health.set_ready();
        assert!(
            bounded(get_status(addr, "/readyz"))
                .await
                .expect("answer")
                .contains("200")
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("stops")
            .expect("task")
            .expect("serve");
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_stops_beating_is_not_live() {
        let health = Health::new(Duration::from_secs(60));
        assert!(health.live());
        tokio::time::advance(Duration::from_secs(59)).await;
        health.beat();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(health.live(), "beaten 59 s ago");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!health.live(), "61 s without a beat");
        health.beat();
        assert!(health.live());
    }
}
