//! parse_static_nodes on arbitrary text (static-nodes.json / permissioned-nodes.json): errors,
//! never panics; every entry of a parsed list re-parses from its rendering.
#![no_main]

use fedgw_proto::enode::{EnodeUrl, MAX_STATIC_NODES, parse_static_nodes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(nodes) = parse_static_nodes(text) {
        assert!(nodes.len() <= MAX_STATIC_NODES);
        for node in nodes {
            assert_eq!(EnodeUrl::parse(&node.to_string()).ok(), Some(node));
        }
    }
});
