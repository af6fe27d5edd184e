//! The audit trail of this site's chain RPC actions: every call of the raft keeper and of live
//! peering that changes a local node (raft membership, peers, allowlist) is appended to the
//! store's audit trail as `chain.<method>` (org: this org, subject: the local node, signer
//! `local`), with its outcome (`ok` or the error label) in the hashed detail. Reads
//! (`raft_cluster`, `admin_peers`, ...) are not recorded.

use std::sync::Arc;

use tracing::warn;

use super::rpc::CallHook;
use crate::metrics::Metrics;
use crate::store::{AuditEvent, Store};

/// The JSON-RPC (and Tessera ADMIN) methods that change a node, and so are audited.
pub const AUDITED: &[&str] = &[
    "raft_addPeer",
    "raft_addLearner",
    "raft_promoteToPeer",
    "raft_removePeer",
    "admin_addPeer",
    "admin_removePeer",
    "perm_addNodesToAllowlist",
    "perm_removeNodesFromAllowlist",
    "tessera_addPeer",
];

/// The audit event of one finished call, or `None` for a read.
pub fn event(org: &str, node: &str, method: &str, result: &str) -> Option<AuditEvent> {
    AUDITED
        .contains(&method)
        .then(|| AuditEvent::local(&format!("chain.{method}"), org, node, result))
}

/// A call hook that counts every call in the metrics and appends the audited ones to the
/// store's audit trail (on the blocking pool: the append is one fsynced write; a failure is
/// logged, the call's effect stands).
pub fn hook(metrics: Metrics, store: Arc<Store>, org: String, node: String) -> CallHook {
    Arc::new(move |method, result| {
        metrics.chain_rpc_call(method, result);
        let Some(ev) = event(&org, &node, method, result) else {
            return;
        };
        let store = store.clone();
        // outside a runtime (never in fedgw run) the append is made in place
        let append = move || {
            if let Err(e) = store.append_audit(&[ev]) {
                warn!(error = %crate::net::with_sources(&e), "cannot append a chain action to the audit trail");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(append)),
            Err(_) => append(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_audited_and_reads_are_not() {
        let ev = event("org1", "node1", "admin_addPeer", "ok").expect("audited");
        assert_eq!(ev.kind, "chain.admin_addPeer");
        assert_eq!((ev.org.as_str(), ev.subject.as_str()), ("org1", "node1"));
        assert_eq!(ev.signer, crate::store::audit::LOCAL);
        assert!(event("org1", "node1", "raft_cluster", "ok").is_none());
        assert!(event("org1", "node1", "admin_peers", "ok").is_none());
        // the outcome is part of what is hashed
        assert_ne!(
            ev.record_hash,
            event("org1", "node1", "admin_addPeer", "timeout")
                .expect("audited")
                .record_hash
        );
    }

    #[test]
    fn the_hook_appends_an_audited_call_to_the_store() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(&d.path().join("store.redb")).expect("open"));
        let h = hook(Metrics::new(), store.clone(), "org1".into(), "node1".into());
        h("eth_blockNumber", "ok");
        h("raft_removePeer", "ok");
        let all = store.audit_all().expect("read");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.kind, "chain.raft_removePeer");
    }
}
