//! The yamux frame decoder of TCP+TLS tunnels on arbitrary bytes, fed in pieces of the size
//! the first byte gives: typed errors, no panics; the headers and payload pieces handed on
//! re-encode to the bytes they came from, in order; a data frame's pieces are never empty,
//! name its stream, add up to its length and are followed by its end; the decoder stops short
//! only for part of a header or for payload bytes not yet arrived.
#![no_main]

use bytes::BytesMut;
use fedgw_gateway::tunnel::mux::{FrameReader, HEADER_LEN, Header, Kind, MAX_RECV_FRAME, Piece};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&step, data)) = input.split_first() else {
        return;
    };
    let mut reader = FrameReader::default();
    let mut buf = BytesMut::new();
    let mut taken = Vec::new();
    let mut current: Option<(Header, usize)> = None;
    let mut fed = 0;
    for chunk in data.chunks(usize::from(step).max(1)) {
        buf.extend_from_slice(chunk);
        fed += chunk.len();
        loop {
            match reader.next(&mut buf) {
                Ok(Some(Piece::Header(h))) => {
                    assert!(current.is_none(), "a header inside a payload");
                    taken.extend_from_slice(&h.encode());
                    if h.kind == Kind::Data {
                        assert!(h.length <= MAX_RECV_FRAME);
                        current = Some((h, 0));
                    }
                }
                Ok(Some(Piece::Body(stream, bytes))) => {
                    let (h, got) = current.as_mut().expect("a body piece outside a data frame");
                    assert_eq!(stream, h.stream);
                    assert!(!bytes.is_empty());
                    *got += bytes.len();
                    assert!(*got <= h.length as usize);
                    taken.extend_from_slice(&bytes);
                }
                Ok(Some(Piece::End(h))) => {
                    let (c, got) = current.take().expect("an end outside a data frame");
                    assert_eq!(c, h);
                    assert_eq!(got, h.length as usize);
                }
                Ok(None) => {
                    match current {
                        Some(_) => assert!(buf.is_empty(), "payload bytes left behind"),
                        None => assert!(buf.len() < HEADER_LEN, "a whole header left behind"),
                    }
                    break;
                }
                Err(_) => return,
            }
        }
        assert_eq!(&taken[..], &data[..taken.len()]);
        assert_eq!(taken.len() + buf.len(), fed, "bytes lost or made up");
    }
});
