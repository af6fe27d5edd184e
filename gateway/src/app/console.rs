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
use crate::store::{AuditFilter, Store, audit_entries};

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
    /// The store whose audit trail the console shows.
    pub store: Arc<Store>,
}

/// The console's audit source: the store's hash-chained audit trail
/// ([`crate::store::audit_entries`]). Each entry is shown as its JSON form plus `at` (RFC 3339,
/// UTC) and `summary` (subject and signer).
#[derive(Debug)]
pub struct StoreAudit(pub Arc<Store>);

impl console::AuditSource for StoreAudit {
    fn entries(
        &self,
        org: Option<&str>,
        kind: Option<&str>,
        limit: usize,
    ) -> Vec<serde_json::Value> {
        let filter = AuditFilter {
            since_ms: None,
            org: org.map(str::to_owned),
            kind: kind.map(str::to_owned),
            limit: Some(limit),
        };
        let entries = match audit_entries(&self.0, &filter) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %crate::net::with_sources(&e), "console: reading the audit trail failed");
                return vec![];
            }
        };
        entries
            .into_iter()
            .map(|e| {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.time_ms);
                let summary = format!("{} (signed by {})", e.subject, e.signer);
                let mut v = serde_json::to_value(&e).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "at".into(),
                        humantime::format_rfc3339_seconds(at).to_string().into(),
                    );
                    o.insert("summary".into(), summary.into());
                }
                v
            })
            .collect()
    }
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
        audit: Some(Arc::new(StoreAudit(s.store))),
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
