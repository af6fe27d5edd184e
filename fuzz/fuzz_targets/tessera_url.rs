//! The Tessera URL a node record publishes (`admin::published_tessera_url`) for arbitrary
//! registered text: a typed error or a URL under the node's consortium name that keeps the
//! registered URL's port, never a panic, and never the registered host.
#![no_main]

use fedgw_gateway::admin::published_tessera_url;
use fedgw_proto::domain::Node;
use fedgw_proto::v1::ClientKind;
use libfuzzer_sys::fuzz_target;

const NAME: &str = "node1.org1.acme.example";

fn tessera_port(url: &str) -> Option<u16> {
    let n = Node {
        client: ClientKind::Tessera,
        enode_id: None,
        p2p_port: None,
        raft_port: None,
        raft_id: 0,
        tessera_keys: vec![],
        tessera_url: Some(url.to_owned()),
        roles: vec![],
        site: "dc1".to_owned(),
        allowed_orgs: vec![],
        services: vec![],
        ipfs_peer_id: None,
        tls_cert_der: None,
        raft_learner: false,
    };
    n.ports().get("tessera").copied()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(url) = published_tessera_url(text, NAME)
        && !url.is_empty()
    {
        let rest = url.split_once("://").expect("a scheme").1;
        assert!(rest.starts_with(NAME), "{url}");
        // the port the registered URL gives is the one published (an IPv6 literal without a
        // port gives none to `Node::ports`; the published URL writes the scheme's default)
        if let Some(port) = tessera_port(text) {
            assert_eq!(tessera_port(&url), Some(port), "{text} -> {url}");
        }
    }
});
