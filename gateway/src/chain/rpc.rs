//! A bounded JSON-RPC 2.0 client over HTTP/1.1 for a chain node's local RPC endpoint.
//!
//! One request per connection (`Connection: close`), the whole call (connect, send, read) under
//! one time bound, the response body capped in bytes. Anything the endpoint answers is input from
//! outside: a wrong status, a body over the cap, bytes that are not JSON-RPC 2.0 or a result of
//! the wrong shape each end in their own [`RpcError`] variant, never a panic.
//!
//! Only the methods fedgw needs have typed wrappers (GoQuorum raft API,
//! <https://docs.goquorum.consensys.io/reference/api-methods#raft-methods>, and the chain view
//! for `fedgw chain status`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default bound on one call: connect, send and read, together.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on a response body, in bytes (a raft cluster of a few hundred members fits).
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
pub use fedgw_proto::rpc_url::{MAX_URL_LEN, RpcUrl, UrlError};

/// Longest error message kept from a remote JSON-RPC error, in characters.
const MAX_REMOTE_MESSAGE: usize = 200;

/// Why a JSON-RPC call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The TCP connection could not be opened.
    #[error("cannot connect to the RPC endpoint")]
    Connect(#[source] std::io::Error),
    /// The call did not finish within its time bound.
    #[error("RPC call timed out after {0:?}")]
    Timeout(Duration),
    /// HTTP failed below the JSON-RPC layer (connection reset, bad framing).
    #[error("HTTP exchange with the RPC endpoint failed")]
    Http(#[source] hyper::Error),
    /// The endpoint answered with an HTTP status other than 200.
    #[error("RPC endpoint answered HTTP {0}")]
    Status(u16),
    /// The response body is larger than the cap.
    #[error("RPC response larger than {0} bytes")]
    TooLarge(usize),
    /// The response is not a JSON-RPC 2.0 response to this call.
    #[error("RPC endpoint answered something that is not a JSON-RPC 2.0 response")]
    Garbage,
    /// The node answered with a JSON-RPC error object.
    #[error("node refused {method}: {message} (code {code})")]
    Remote {
        /// The method called.
        method: &'static str,
        /// The JSON-RPC error code.
        code: i64,
        /// The error message, cut to 200 characters.
        message: String,
    },
    /// The result has another shape than the method returns.
    #[error("unexpected result from {method}")]
    Result {
        /// The method called.
        method: &'static str,
        /// What did not match.
        #[source]
        source: serde_json::Error,
    },
}

impl RpcError {
    /// A low-cardinality label for metrics: `connect`, `timeout`, `http`, `status`, `too_large`,
    /// `garbage`, `remote` or `result`.
    pub fn label(&self) -> &'static str {
        match self {
            RpcError::Connect(_) => "connect",
            RpcError::Timeout(_) => "timeout",
            RpcError::Http(_) => "http",
            RpcError::Status(_) => "status",
            RpcError::TooLarge(_) => "too_large",
            RpcError::Garbage => "garbage",
            RpcError::Remote { .. } => "remote",
            RpcError::Result { .. } => "result",
        }
    }
}

/// One member of a raft cluster as `raft_cluster` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RaftPeer {
    /// The raft id.
    pub raft_id: u16,
    /// The enode id, 128 hex digits.
    pub node_id: String,
    /// The host in the member's enode URL (a DNS name with `--raftdnsenable`).
    pub hostname: String,
    /// The raft port.
    pub raft_port: u16,
    /// `minter`, `verifier` or `learner`.
    #[serde(default)]
    pub role: String,
    /// Whether the member's raft transport is up (GoQuorum's `nodeActive`; false when absent).
    #[serde(default)]
    pub node_active: bool,
}

/// One connected peer as `admin_peers` lists it (only what fedgw reads).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PeerInfo {
    /// The peer's enode URL, `enode://ID@HOST:PORT...`.
    #[serde(default)]
    pub enode: String,
}

impl PeerInfo {
    /// The enode id (128 lowercase hex digits) from [`PeerInfo::enode`]; `None` when it holds
    /// none. (geth's `id` field is a hash of the key, not the key, so the URL is read instead.)
    pub fn enode_id(&self) -> Option<String> {
        let id = self.enode.strip_prefix("enode://")?.split('@').next()?;
        (id.len() == 128 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| id.to_ascii_lowercase())
    }
}

/// Called once per finished call with the method and `ok` or [`RpcError::label`].
pub type CallHook = std::sync::Arc<dyn Fn(&'static str, &'static str) + Send + Sync>;

/// A JSON-RPC client for one endpoint. Cheap to clone; holds no connection between calls.
#[derive(Clone)]
pub struct RpcClient {
    url: RpcUrl,
    timeout: Duration,
    max_body: usize,
    next_id: std::sync::Arc<AtomicU64>,
    hook: Option<CallHook>,
}

#[derive(Deserialize)]
struct Response {
    jsonrpc: String,
    id: Value,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
struct ErrorObject {
    code: i64,
    #[serde(default)]
    message: String,
}

impl RpcClient {
    /// A client with [`DEFAULT_TIMEOUT`] and [`DEFAULT_MAX_BODY`].
    pub fn new(url: RpcUrl) -> Self {
        RpcClient {
            url,
            timeout: DEFAULT_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
            next_id: std::sync::Arc::new(AtomicU64::new(1)),
            hook: None,
        }
    }

    /// Sets the bound on one call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the cap on a response body, in bytes.
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    /// Reports every finished call to `hook` (metrics).
    pub fn with_hook(mut self, hook: CallHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The endpoint.
    pub fn url(&self) -> &RpcUrl {
        &self.url
    }

    /// Calls `method` with `params` and decodes the result as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        params: Value,
    ) -> Result<T, RpcError> {
        let out = match tokio::time::timeout(self.timeout, self.exchange(method, params)).await {
            Ok(r) => r.and_then(|v| {
                serde_json::from_value(v).map_err(|source| RpcError::Result { method, source })
            }),
            Err(_) => Err(RpcError::Timeout(self.timeout)),
        };
        if let Some(hook) = &self.hook {
            hook(method, out.as_ref().map_or_else(RpcError::label, |_| "ok"));
        }
        out
    }

    async fn exchange(&self, method: &'static str, params: Value) -> Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let (status, bytes) = self
            .http(hyper::Method::POST, self.url.path(), body.to_string())
            .await?;
        if status != hyper::StatusCode::OK {
            return Err(RpcError::Status(status.as_u16()));
        }
        let resp: Response = serde_json::from_slice(&bytes).map_err(|_| RpcError::Garbage)?;
        if resp.jsonrpc != "2.0" || resp.id != id {
            return Err(RpcError::Garbage);
        }
        match (resp.result, resp.error) {
            (_, Some(e)) => Err(RpcError::Remote {
                method,
                code: e.code,
                message: e.message.chars().take(MAX_REMOTE_MESSAGE).collect(),
            }),
            (Some(v), None) => Ok(v),
            // `"result": null` deserialises as absent; methods returning null say so
            (None, None) => Ok(Value::Null),
        }
    }

    /// One HTTP/1.1 request with a JSON body on a fresh connection; the status and the body,
    /// capped at the client's body limit. Not bounded in time: callers wrap it.
    async fn http(
        &self,
        method: hyper::Method,
        path: &str,
        body: String,
    ) -> Result<(hyper::StatusCode, Bytes), RpcError> {
        let stream = tokio::net::TcpStream::connect((self.url.host(), self.url.port()))
            .await
            .map_err(RpcError::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(RpcError::Http)?;
        // The connection task ends when the exchange does or the call is dropped at its bound.
        let conn = tokio::spawn(conn);
        let _abort = AbortOnDrop(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.url.authority())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::CONNECTION, "close")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| RpcError::Garbage)?;
        let resp = sender.send_request(req).await.map_err(RpcError::Http)?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), self.max_body)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => RpcError::Http(*e),
                Err(_) => RpcError::TooLarge(self.max_body),
            })?
            .to_bytes();
        Ok((status, bytes))
    }

    /// `raft_cluster`: the members of the raft cluster this node knows.
    pub async fn raft_cluster(&self) -> Result<Vec<RaftPeer>, RpcError> {
        self.call("raft_cluster", Value::Array(vec![])).await
    }

    /// `raft_addPeer(enode)`: adds a voting member; returns its raft id.
    pub async fn raft_add_peer(&self, enode: &str) -> Result<u16, RpcError> {
        self.call("raft_addPeer", serde_json::json!([enode])).await
    }

    /// `raft_addLearner(enode)`: adds a non-voting member; returns its raft id.
    pub async fn raft_add_learner(&self, enode: &str) -> Result<u16, RpcError> {
        self.call("raft_addLearner", serde_json::json!([enode]))
            .await
    }

    /// `raft_promoteToPeer(id)`: makes a learner a voting member.
    pub async fn raft_promote_to_peer(&self, raft_id: u16) -> Result<bool, RpcError> {
        self.call("raft_promoteToPeer", serde_json::json!([raft_id]))
            .await
    }

    /// `raft_removePeer(id)`: removes a member from the cluster.
    pub async fn raft_remove_peer(&self, raft_id: u16) -> Result<(), RpcError> {
        let _: Value = self
            .call("raft_removePeer", serde_json::json!([raft_id]))
            .await?;
        Ok(())
    }

    /// `raft_role`: `minter`, `verifier` or `learner`.
    pub async fn raft_role(&self) -> Result<String, RpcError> {
        self.call("raft_role", Value::Array(vec![])).await
    }

    /// `eth_blockNumber`: the node's chain height.
    pub async fn block_number(&self) -> Result<u64, RpcError> {
        let hex: String = self.call("eth_blockNumber", Value::Array(vec![])).await?;
        parse_quantity(&hex).ok_or(RpcError::Garbage)
    }

    /// `net_peerCount`: connected devp2p peers.
    pub async fn peer_count(&self) -> Result<u64, RpcError> {
        let hex: String = self.call("net_peerCount", Value::Array(vec![])).await?;
        parse_quantity(&hex).ok_or(RpcError::Garbage)
    }

    /// `admin_addPeer(enode)`: asks the node to connect to `enode` and keep reconnecting (geth,
    /// GoQuorum, Besu); `true` when the node took it.
    pub async fn admin_add_peer(&self, enode: &str) -> Result<bool, RpcError> {
        self.call("admin_addPeer", serde_json::json!([enode])).await
    }

    /// `admin_removePeer(enode)`: drops the peer and stops reconnecting to it; `true` when the
    /// node took it.
    pub async fn admin_remove_peer(&self, enode: &str) -> Result<bool, RpcError> {
        self.call("admin_removePeer", serde_json::json!([enode]))
            .await
    }

    /// `admin_peers`: the peers connected now.
    pub async fn admin_peers(&self) -> Result<Vec<PeerInfo>, RpcError> {
        self.call("admin_peers", Value::Array(vec![])).await
    }

    /// `perm_getNodesAllowlist` (Besu local permissioning): the allowlisted enode URLs.
    pub async fn perm_get_nodes_allowlist(&self) -> Result<Vec<String>, RpcError> {
        self.call("perm_getNodesAllowlist", Value::Array(vec![]))
            .await
    }

    /// `perm_addNodesToAllowlist([enode, ...])` (Besu local permissioning). Besu answers
    /// `"Success"`; any non-error result is taken as done.
    pub async fn perm_add_nodes_to_allowlist(&self, enodes: &[String]) -> Result<(), RpcError> {
        let _: Value = self
            .call("perm_addNodesToAllowlist", serde_json::json!([enodes]))
            .await?;
        Ok(())
    }

    /// `perm_removeNodesFromAllowlist([enode, ...])` (Besu local permissioning).
    pub async fn perm_remove_nodes_from_allowlist(
        &self,
        enodes: &[String],
    ) -> Result<(), RpcError> {
        let _: Value = self
            .call("perm_removeNodesFromAllowlist", serde_json::json!([enodes]))
            .await?;
        Ok(())
    }

    /// Tessera's ADMIN API `PUT /config/peers` with `{"url": url}` under this client's URL: adds
    /// a peer to the running node (201 when new, 200 when it already had it). Tessera has no
    /// call that removes a peer. Bounded like a JSON-RPC call; reported to the hook as method
    /// `tessera_addPeer`.
    pub async fn tessera_add_peer(&self, url: &str) -> Result<(), RpcError> {
        const METHOD: &str = "tessera_addPeer";
        let path = format!("{}/config/peers", self.url.path().trim_end_matches('/'));
        let body = serde_json::json!({ "url": url }).to_string();
        let out =
            match tokio::time::timeout(self.timeout, self.http(hyper::Method::PUT, &path, body))
                .await
            {
                Ok(Ok((status, _))) if status.is_success() => Ok(()),
                Ok(Ok((status, _))) => Err(RpcError::Status(status.as_u16())),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(RpcError::Timeout(self.timeout)),
            };
        if let Some(hook) = &self.hook {
            hook(METHOD, out.as_ref().map_or_else(RpcError::label, |_| "ok"));
        }
        out
    }
}

/// A JSON-RPC quantity: `0x` and 1 to 16 hex digits.
fn parse_quantity(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0x")?;
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests;
