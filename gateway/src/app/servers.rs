//! The gateway's servers (DNS over UDP and TCP, admin, metrics, join, federation) run as
//! watched tasks. Each accept loop survives per-connection errors, so a server task that ends
//! before shutdown (an error, a panic, or the acceptor that fed it gone) means the gateway no
//! longer serves what it was started for: that is logged at `error` and clears `/readyz` for good
//! ([`Metrics::server_stopped`]), so an orchestrator replaces the process.

use std::fmt::Display;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use crate::metrics::Metrics;

/// Spawns `server` (named `what` in logs and metrics) on `tracker`, and a watcher that reports
/// it if it ends before `shutdown` is cancelled. An error it returns during shutdown is logged
/// at `warn`.
pub(super) fn spawn_watched<F, E>(
    tracker: &TaskTracker,
    what: &'static str,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    server: F,
) where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let handle = tracker.spawn(server);
    let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
    tracker.spawn(async move {
        let ended = handle.await;
        if shutdown.is_cancelled() {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(server = what, error = %e, "server stopped with an error"),
                Err(e) => warn!(server = what, error = %e, "server task ended abnormally"),
            }
            return;
        }
        match ended {
            Ok(Ok(())) => error!(
                server = what,
                "server stopped before shutdown; the gateway is no longer ready"
            ),
            Ok(Err(e)) => error!(
                server = what,
                error = %e,
                "server failed; the gateway is no longer ready"
            ),
            Err(e) => error!(
                server = what,
                error = %e,
                "server task ended abnormally; the gateway is no longer ready"
            ),
        }
        metrics.server_stopped(what);
    });
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;
    use crate::listener::TlsConn;

    /// Log lines written while a test runs, for asserting on their level.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
        }
    }

    /// A gRPC server named `federation` whose connections come over the returned sender,
    /// spawned as the gateway spawns its servers.
    fn federation_server(
        tracker: &TaskTracker,
        metrics: &Metrics,
        shutdown: &CancellationToken,
    ) -> mpsc::Sender<TlsConn> {
        let (tx, rx) = mpsc::channel(1);
        // no services: what is served does not matter, only that the server runs
        let router =
            tonic::transport::Server::builder().add_routes(tonic::service::Routes::default());
        super::super::spawn_server(tracker, "federation", router, rx, metrics, shutdown);
        tx
    }

    /// `/readyz` of a metrics server for `metrics`, as an HTTP status.
    async fn readyz(addr: std::net::SocketAddr) -> u16 {
        tokio::task::spawn_blocking(move || {
            fedgw_tests::http_get(&addr.to_string(), "/readyz").expect("GET /readyz")
        })
        .await
        .expect("GET /readyz task")
        .0
    }

    /// Polls `/readyz` until it answers `want`, for at most ten seconds.
    async fn wait_readyz(addr: std::net::SocketAddr, want: u16) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = readyz(addr).await;
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz still {got}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_server_that_dies_logs_an_error_and_clears_readiness() {
        let logs = Logs::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let (tracker, shutdown, metrics) =
            (TaskTracker::new(), CancellationToken::new(), Metrics::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        let addr = listener.local_addr().expect("metrics address");
        tracker.spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            shutdown.clone(),
        ));
        let conns = federation_server(&tracker, &metrics, &shutdown);
        metrics.set_ready();
        assert_eq!(readyz(addr).await, 200);
        assert!(!logs.text().contains("ERROR"), "{}", logs.text());

        // the acceptor feeding the federation server goes away: the server ends
        drop(conns);
        wait_readyz(addr, 503).await;
        assert!(!metrics.is_ready());
        let text = logs.text();
        assert!(
            text.lines()
                .any(|l| l.contains("ERROR") && l.contains("server=\"federation\"")),
            "no error naming the server in:\n{text}"
        );
        assert!(
            metrics
                .encode()
                .contains("fedgw_servers_stopped_total{server=\"federation\"} 1"),
        );
        // a latch: marking ready again does not hide a dead server
        metrics.set_ready();
        assert_eq!(readyz(addr).await, 503);

        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .expect("tasks end at shutdown");
    }

    #[tokio::test]
    async fn servers_that_stop_at_shutdown_leave_readiness_alone() {
        let (tracker, shutdown, metrics) =
            (TaskTracker::new(), CancellationToken::new(), Metrics::new());
        let _conns = federation_server(&tracker, &metrics, &shutdown);
        let failing = shutdown.clone();
        spawn_watched(&tracker, "admin", &metrics, &shutdown, async move {
            failing.cancelled().await;
            Err::<(), _>("listener closed")
        });
        metrics.set_ready();
        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .expect("tasks end at shutdown");
        assert!(metrics.is_ready());
        assert!(!metrics.encode().contains("fedgw_servers_stopped_total{"));
    }

    #[tokio::test]
    async fn a_server_that_panics_clears_readiness() {
        let (tracker, shutdown, metrics) =
            (TaskTracker::new(), CancellationToken::new(), Metrics::new());
        metrics.set_ready();
        spawn_watched(&tracker, "dns", &metrics, &shutdown, async {
            if true {
                panic!("a bug in the server");
            }
            Ok::<(), std::io::Error>(())
        });
        tracker.close();
        tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .expect("the watcher ends");
        assert!(!metrics.is_ready());
    }
}
