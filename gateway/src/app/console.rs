//! Where `fedgw run` serves the web console ([`crate::console`]): on the metrics address by
//! default, or on its own (`[console] listen`, `--console`), with the access rule the address
//! needs.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use fedgw_certs::tls::ReloadableIdentity;
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use super::{RunError, bind_tcp, servers};
use crate::admin::AdminService;
use crate::console::{self, Access, Console, ConsoleConfig};
use crate::datadir::DataDir;
use crate::metrics::Metrics;

/// What the console is set up from.
pub(super) struct Setup<'a> {
    pub dir: &'a DataDir,
    pub config: &'a ConsoleConfig,
    /// `--console ADDR`, over `config.listen`.
    pub listen: Option<SocketAddr>,
    /// The bound metrics address.
    pub metrics: SocketAddr,
    pub identity: &'a ReloadableIdentity,
    pub org_ca: &'a CertificateDer<'static>,
    pub admin: Arc<AdminService>,
}

/// The console as the metrics server should serve it, and its URL.
pub(super) struct OnMetrics {
    /// Routes to merge into the metrics server (`None`: served elsewhere or not at all).
    pub router: Option<Router>,
    /// The console's URL for `run.json`.
    pub url: Option<String>,
}

/// Sets the console up: on its own address (bound and spawned here, TLS when not loopback), or
/// as routes for the metrics server. On a non-loopback metrics address without `[console]
/// token_file` the console is not served there (that address is plain HTTP, usually opened for
/// a metrics scraper); this is logged with the fix.
pub(super) async fn start(
    s: Setup<'_>,
    tracker: &TaskTracker,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<OnMetrics, RunError> {
    let console = Console {
        admin: s.admin,
        audit: None,
    };
    if let Some(addr) = s.listen.or(s.config.listen) {
        let access = console::access_for(addr, s.config, s.dir.root())?;
        let listener = bind_tcp("console", addr).await?;
        let bound = listener.local_addr().map_err(|source| RunError::Bind {
            what: "console",
            addr: addr.to_string(),
            source,
        })?;
        let tls = match access {
            Access::Open => None,
            Access::Guarded { .. } => {
                let ca = s.config.client_cert.then(|| s.org_ca.clone());
                Some(Arc::new(console::serve::tls_config(s.identity, ca)?))
            }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{bound}/");
        info!(url = %url, "web console");
        let served = console::serve(
            listener,
            console::router(console, access),
            tls,
            shutdown.clone(),
        );
        servers::spawn_watched(tracker, "console", metrics, shutdown, served);
        return Ok(OnMetrics {
            router: None,
            url: Some(url),
        });
    }
    let access = if console::is_loopback(&s.metrics) {
        Access::Open
    } else if let Some(path) = &s.config.token_file {
        Access::Guarded {
            token: Some(Arc::from(console::read_token(s.dir.root(), path)?)),
        }
    } else {
        info!(
            metrics = %s.metrics,
            "the web console is not served: the metrics address is not loopback; set [console] \
             listen (or --console) or [console] token_file"
        );
        return Ok(OnMetrics {
            router: None,
            url: None,
        });
    };
    Ok(OnMetrics {
        router: Some(console::router(console, access)),
        url: Some(format!("http://{}/", s.metrics)),
    })
}
