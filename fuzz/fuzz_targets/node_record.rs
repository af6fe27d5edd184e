//! A node record's fields as a peer sends them (after its signature checked out): decode, then
//! the checked `Node` (named services, IPFS peer id in base58, a DER TLS certificate) and its
//! ports. A typed refusal or a node that encodes back to a record that checks again, never a
//! panic.
#![no_main]

use fedgw_proto::domain::Node;
use fedgw_proto::service::IpfsPeerId;
use fedgw_proto::v1::NodeRecord;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = IpfsPeerId::new(text);
    }
    let Ok(record) = NodeRecord::decode(data) else {
        return;
    };
    if let Ok(node) = Node::try_from(&record) {
        let _ = node.ports();
        let again = NodeRecord::from(&node);
        assert_eq!(Node::try_from(&again).as_ref(), Ok(&node));
    }
});
