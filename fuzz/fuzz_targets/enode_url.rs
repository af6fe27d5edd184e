//! EnodeUrl::parse on arbitrary text: typed errors, no panics; what parses renders to a canonical
//! form that parses back to an equal value and renders identically.
#![no_main]

use fedgw_proto::enode::EnodeUrl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(url) = EnodeUrl::parse(text) {
        let canonical = url.to_string();
        let again = EnodeUrl::parse(&canonical).expect("a rendered enode url re-parses");
        assert_eq!(again, url);
        assert_eq!(again.to_string(), canonical);
    }
});
