//! JoinToken::parse on arbitrary text: typed errors, no panics; what parses re-encodes to the
//! same token.
#![no_main]

use fedgw_certs::JoinToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(token) = JoinToken::parse(text) {
        let again = JoinToken::parse(&token.to_text()).expect("a parsed token re-parses");
        assert_eq!(again, token);
    }
});
