//! JoinToken::parse and TokenId::parse on arbitrary text: typed errors, no panics; what parses
//! re-encodes to the same token, and a token id parses only from 16 lowercase hex digits.
#![no_main]

use fedgw_certs::JoinToken;
use fedgw_certs::token::TokenId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(token) = JoinToken::parse(text) {
        let again = JoinToken::parse(&token.to_text()).expect("a parsed token re-parses");
        assert_eq!(again, token);
        assert!(TokenId::parse(&token.id).is_some(), "a token's id is a TokenId");
    }
    if TokenId::parse(text).is_some() {
        assert_eq!(text.len(), TokenId::TEXT_LEN);
        assert!(text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }
});
