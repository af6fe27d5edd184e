//! The operator's read-only web console: one page (`/`) with the consortium's topology, members,
//! nodes and audit trail, and the same data as JSON under `/api/v1/` ([`api`]).
//!
//! By default it is served on the metrics address next to `/metrics`; `[console] listen` (or
//! `fedgw run --console ADDR`) gives it its own address ([`serve`]). On a loopback address it
//! is open, like the admin socket to local users. On any other address it is HTTPS with the
//! gateway leaf, and each request needs a client certificate from this org's CA
//! (`[console] client_cert`, the leaves `fedgw cert issue` writes) or the bearer token of
//! `[console] token_file`; the gateway refuses to start with neither.
//!
//! Every document is built on request from the admin service's own answers (`ListMembers`,
//! `ListNodes`, the status report), so the console, `fedgw members`, `fedgw node list` and
//! `fedgw status` never disagree. The page is rendered on the server ([`page`]) and needs no
//! JavaScript; a small script embedded in it polls the JSON every 2 s and redraws.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fedgw_proto::v1 as pb;
use fedgw_proto::v1::admin_server::Admin as _;
use serde::{Deserialize, Serialize};

use crate::admin::AdminService;

pub mod api;
mod page;
pub mod serve;

pub use serve::serve;

/// `[console]` in `fedgw.toml`: where the console is served and who may read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Its own address; unset: served at `/` on the metrics address. A non-loopback address
    /// needs `client_cert` or `token_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token that grants access on a non-loopback address (relative
    /// paths are under the data dir).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Accept client certificates issued by this org's CA on a non-loopback address.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub client_cert: bool,
}

impl ConsoleConfig {
    /// Whether nothing is set (the section is left out of `fedgw.toml`).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Why the console could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A non-loopback address with neither client certificates nor a token.
    #[error(
        "the console address {0} is not loopback, so it needs access control: set [console] \
         client_cert = true (certificates from `fedgw cert issue`) or [console] token_file, or \
         serve it on 127.0.0.1"
    )]
    Unguarded(SocketAddr),
    /// The token file could not be read.
    #[error("reading the console token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The token file is empty, too short or too long.
    #[error(
        "the console token file {0} must hold one token of 16 to 256 visible characters; write \
         one with e.g. `openssl rand -hex 32 > FILE`"
    )]
    BadToken(PathBuf),
    /// The TLS server config could not be built.
    #[error("building the console's TLS config: {0}")]
    Tls(#[source] rustls::Error),
    /// The org CA could not be used to check client certificates.
    #[error("using the org CA to check console client certificates: {0}")]
    ClientCa(String),
}

/// Longest accepted bearer token, bytes.
const MAX_TOKEN_BYTES: usize = 256;
/// Shortest accepted bearer token, bytes.
const MIN_TOKEN_BYTES: usize = 16;

/// Reads the bearer token from `path` (relative to `dir`): one line of 16 to 256 visible ASCII
/// characters; surrounding whitespace is ignored.
pub fn read_token(dir: &Path, path: &Path) -> Result<String, ConsoleError> {
    let path = dir.join(path);
    let text = std::fs::read(&path).map_err(|source| ConsoleError::TokenFile {
        path: path.clone(),
        source,
    })?;
    let token = String::from_utf8(text)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| {
            (MIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&t.len())
                && t.bytes().all(|b| b.is_ascii_graphic())
        });
    token.ok_or(ConsoleError::BadToken(path))
}

/// Supplies audit-trail entries to the console. The gateway's hash-chained audit log
/// implements it; without one the console shows "no audit trail".
pub trait AuditSource: Send + Sync + std::fmt::Debug {
    /// Entries newest first, at most `limit`, only of `org` and of `kind` when given. Each entry
    /// is one JSON object; the console shows its `at`, `org`, `kind` and `summary` fields when
    /// present and the whole object in the JSON API.
    fn entries(
        &self,
        org: Option<&str>,
        kind: Option<&str>,
        limit: usize,
    ) -> Vec<serde_json::Value>;
}

/// Most audit entries one page or `/api/v1/audit` answer shows.
pub const MAX_AUDIT_ENTRIES: usize = 200;

/// Longest a console request may take, including building its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the console reads: the admin service and, when wired, an audit source.
#[derive(Debug, Clone)]
pub struct Console {
    /// The admin service whose answers the console shows.
    pub admin: Arc<AdminService>,
    /// The audit trail (`fedgw run` supplies the store's); `None`: the page says there is none.
    pub audit: Option<Arc<dyn AuditSource>>,
}

/// Who may read the console.
#[derive(Debug, Clone)]
pub enum Access {
    /// Anyone who can connect (a loopback address).
    Open,
    /// Only requests with a verified client certificate or this bearer token.
    Guarded {
        /// The bearer token, when `[console] token_file` is set.
        token: Option<Arc<str>>,
    },
}

/// A request extension set by [`serve`] on connections whose client presented a certificate
/// that chains to this org's CA.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedClient;

/// The `?org=&kind=` filter of the audit section and `/api/v1/audit`; also carries the
/// `?token=` a browser may send instead of a header.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    /// Only entries of this org.
    pub org: Option<String>,
    /// Only entries of this kind.
    pub kind: Option<String>,
}

impl Filter {
    fn cleaned(self) -> Self {
        let keep = |s: Option<String>| {
            s.map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty() && s.len() <= 64)
        };
        Self {
            org: keep(self.org),
            kind: keep(self.kind),
        }
    }
}

/// Everything the page shows, gathered once per request.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Sites and links.
    pub topology: api::Topology,
    /// Members, pending joins, revoked orgs.
    pub members: api::Members,
    /// Nodes.
    pub nodes: api::Nodes,
    /// The audit section.
    pub audit: api::Audit,
}

/// Why a console request failed.
#[derive(Debug, thiserror::Error)]
#[error("the admin service could not answer: {0}")]
struct Unavailable(String);

impl IntoResponse for Unavailable {
    fn into_response(self) -> Response {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{self}\n")).into_response()
    }
}

impl Console {
    async fn lists(&self) -> Result<(pb::StatusResponse, pb::ListMembersResponse), Unavailable> {
        let members = self
            .admin
            .list_members(tonic::Request::new(pb::ListMembersRequest {}))
            .await
            .map_err(|s| Unavailable(s.message().to_owned()))?
            .into_inner();
        Ok((self.admin.status_now(), members))
    }

    async fn node_list(&self) -> Result<pb::ListNodesResponse, Unavailable> {
        Ok(self
            .admin
            .list_nodes(tonic::Request::new(pb::ListNodesRequest {}))
            .await
            .map_err(|s| Unavailable(s.message().to_owned()))?
            .into_inner())
    }

    /// The audit document. The source reads the store, which may scan the whole trail for a
    /// filter that matches little: that runs on the blocking pool, never on the runtime that
    /// carries the gateway's traffic.
    async fn audit(&self, filter: Filter) -> api::Audit {
        let Filter { org, kind } = filter.cleaned();
        let entries = match self.audit.clone() {
            None => vec![],
            Some(a) => {
                let (o, k) = (org.clone(), kind.clone());
                tokio::task::spawn_blocking(move || {
                    let mut e = a.entries(o.as_deref(), k.as_deref(), MAX_AUDIT_ENTRIES);
                    e.truncate(MAX_AUDIT_ENTRIES);
                    e
                })
                .await
                .unwrap_or_default()
            }
        };
        api::Audit {
            available: self.audit.is_some(),
            org,
            kind,
            entries,
        }
    }

    /// Gathers everything the page shows.
    async fn snapshot(&self, filter: Filter) -> Result<Snapshot, Unavailable> {
        let (status, members) = self.lists().await?;
        let nodes = self.node_list().await?;
        Ok(Snapshot {
            topology: api::topology(&status, &members),
            members: api::members(&members),
            nodes: api::nodes(&nodes, &status),
            audit: self.audit(filter).await,
        })
    }
}

async fn page(
    State(c): State<Console>,
    Query(filter): Query<Filter>,
) -> Result<Response, Unavailable> {
    let snap = c.snapshot(filter).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page::render(&snap),
    )
        .into_response())
}

fn json<T: Serialize>(value: &T) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(value)).into_response()
}

async fn topology(State(c): State<Console>) -> Result<Response, Unavailable> {
    let (status, members) = c.lists().await?;
    Ok(json(&api::topology(&status, &members)))
}

async fn members(State(c): State<Console>) -> Result<Response, Unavailable> {
    let (_, members) = c.lists().await?;
    Ok(json(&api::members(&members)))
}

async fn nodes(State(c): State<Console>) -> Result<Response, Unavailable> {
    let list = c.node_list().await?;
    Ok(json(&api::nodes(&list, &c.admin.status_now())))
}

async fn audit(State(c): State<Console>, Query(filter): Query<Filter>) -> Response {
    json(&c.audit(filter).await)
}

/// Whether `headers` or the query carry `token` (compared in constant time).
fn has_token(headers: &HeaderMap, query: Option<&str>, token: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let from_query = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    [bearer, from_query]
        .into_iter()
        .flatten()
        .any(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn guard(State(access): State<Access>, request: Request, next: Next) -> Response {
    match &access {
        Access::Open => next.run(request).await,
        Access::Guarded { token } => {
            let by_cert = request.extensions().get::<VerifiedClient>().is_some();
            let by_token = token
                .as_deref()
                .is_some_and(|t| has_token(request.headers(), request.uri().query(), t));
            if by_cert || by_token {
                next.run(request).await
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer realm=\"fedgw console\"")],
                    "the console needs a client certificate from this org's CA or the bearer \
                     token of [console] token_file (Authorization: Bearer TOKEN, or ?token=TOKEN)\n",
                )
                    .into_response()
            }
        }
    }
}

async fn time_limit(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(r) => r,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the console answer took too long; try again\n",
        )
            .into_response(),
    }
}

/// The console's routes: `/`, `/api/v1/{topology,members,nodes,audit}`, each answering `GET`
/// only, behind `access` and a [`REQUEST_TIMEOUT`] per request; request bodies are refused.
pub fn router(console: Console, access: Access) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/v1/topology", get(topology))
        .route("/api/v1/members", get(members))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/audit", get(audit))
        .with_state(console)
        .layer(middleware::from_fn_with_state(access, guard))
        .layer(middleware::from_fn(time_limit))
        .layer(axum::extract::DefaultBodyLimit::max(0))
}

/// Whether `addr` is loopback, where the console is open.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The access rule for a console on `addr`: open on loopback, else guarded by the configured
/// token and/or client certificates; refused when neither is configured.
pub fn access_for(
    addr: SocketAddr,
    config: &ConsoleConfig,
    dir: &Path,
) -> Result<Access, ConsoleError> {
    if is_loopback(&addr) {
        return Ok(Access::Open);
    }
    if config.token_file.is_none() && !config.client_cert {
        return Err(ConsoleError::Unguarded(addr));
    }
    let token = match &config.token_file {
        Some(p) => Some(Arc::from(read_token(dir, p)?)),
        None => None,
    };
    Ok(Access::Guarded { token })
}

#[cfg(test)]
mod tests;
