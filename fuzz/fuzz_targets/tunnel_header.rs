//! The tunnel stream header codec on arbitrary bytes: typed errors, no panics; a decoded request
//! never claims more than the bytes given or more than MAX_REQUEST_LEN, re-encodes to exactly the
//! bytes it used, and every prefix of those bytes is Incomplete. Answers decode or fail cleanly.
#![no_main]

use fedgw_gateway::tunnel::header::{Answer, Decoded, MAX_REQUEST_LEN, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Decoded::Complete(req, used)) = Request::decode(data) {
        assert!(used <= data.len() && used <= MAX_REQUEST_LEN);
        assert_eq!(req.encode(), &data[..used]);
        for end in 0..used {
            assert_eq!(Request::decode(&data[..end]), Ok(Decoded::Incomplete));
        }
    }
    if let [a, b, ..] = data {
        if let Ok(answer) = Answer::decode([*a, *b]) {
            assert_eq!(answer.encode(), [*a, *b]);
        }
    }
});
