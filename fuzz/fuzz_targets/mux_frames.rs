//! The yamux frame codec of TCP+TLS tunnels on arbitrary bytes: typed errors, no panics; every
//! frame taken re-encodes to the bytes it came from, an incomplete frame leaves the buffer as
//! it was, and the buffer only ever shrinks by whole frames.
#![no_main]

use bytes::BytesMut;
use fedgw_gateway::tunnel::mux::{HEADER_LEN, Kind, MAX_RECV_FRAME, next_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut offset = 0;
    loop {
        let before = buf.len();
        match next_frame(&mut buf) {
            Ok(Some((h, payload))) => {
                let used = before - buf.len();
                assert_eq!(&h.encode()[..], &data[offset..offset + HEADER_LEN]);
                assert_eq!(&payload[..], &data[offset + HEADER_LEN..offset + used]);
                match h.kind {
                    Kind::Data => {
                        assert!(h.length <= MAX_RECV_FRAME);
                        assert_eq!(payload.len(), h.length as usize);
                    }
                    _ => assert!(payload.is_empty()),
                }
                offset += used;
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete frame is left in place");
                break;
            }
            Err(_) => break,
        }
    }
});
