//! The DNS request path: arbitrary bytes parsed as a request, answered from a populated zone over
//! UDP and TCP (opcode, class, EDNS, transfer and size rules), and every question answered.
//! Errors and refusals, never a panic; a UDP reply never needs more than the size asked.
#![no_main]

use std::sync::OnceLock;

use fedgw_gateway::dns::{Transport, UDP_PAYLOAD, Zone, ZoneGateway, ZoneNode};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use libfuzzer_sys::fuzz_target;

fn zone() -> &'static Zone {
    static Z: OnceLock<Zone> = OnceLock::new();
    Z.get_or_init(|| {
        let nodes = vec![ZoneNode {
            org: "org2".into(),
            name: "node1".into(),
            ip: Some("127.77.0.1".parse().expect("ip")),
            alias: None,
            ports: [("p2p".to_owned(), 30303u16), ("raft".to_owned(), 50400)].into(),
            enode_id: Some(fedgw_proto::enode::EnodeId::from_bytes([0xab; 64])),
        }];
        let gateways = vec![ZoneGateway {
            org: "org1".into(),
            site: "dc1".into(),
            ip: Some("127.0.0.1".parse().expect("ip")),
        }];
        Zone::build("acme.test", "gw-dc1.org1", 1, &nodes, &gateways)
    })
}

fuzz_target!(|data: &[u8]| {
    let src = "127.0.0.1:5353".parse().expect("addr");
    if let Ok(request) = Request::from_bytes(data.to_vec(), src, Protocol::Udp) {
        for transport in [Transport::Udp, Transport::Tcp] {
            let reply = zone().respond(&request, transport);
            if reply.truncated {
                assert!(transport == Transport::Udp && reply.answers.is_empty());
            }
            if let Some(edns) = &reply.edns {
                assert_eq!((edns.max_payload(), edns.version()), (UDP_PAYLOAD, 0));
                assert!(edns.options().as_ref().is_empty());
            }
        }
        for q in request.queries.queries() {
            let _ = zone().answer(q.name(), q.query_type());
        }
    }
});
