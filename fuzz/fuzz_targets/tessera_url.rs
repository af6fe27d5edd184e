//! The Tessera URL a node record publishes (`admin::published_tessera_url`) for arbitrary
//! registered text: a typed error or a URL under the node's consortium name that keeps the
//! registered URL's port, never a panic, and never the registered host.
#![no_main]

use fedgw_gateway::admin::published_tessera_url;
use fedgw_proto::v1::NodeRecord;
use libfuzzer_sys::fuzz_target;

const NAME: &str = "node1.org1.acme.example";

fn tessera_port(url: &str) -> Option<u16> {
    let r = NodeRecord {
        tessera_url: url.to_owned(),
        ..Default::default()
    };
    fedgw_proto::node_ports(&r).get("tessera").copied()
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
        // port gives none to node_ports; the published URL writes the scheme's default)
        if let Some(port) = tessera_port(text) {
            assert_eq!(tessera_port(&url), Some(port), "{text} -> {url}");
        }
    }
});
