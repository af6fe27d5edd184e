//! parse_tessera_config on arbitrary text (Tessera JSON config): errors, never panics; the keys
//! it returns render to text that parses back to the same key.
#![no_main]

use fedgw_proto::tessera::{TesseraKey, parse_tessera_config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = parse_tessera_config(text) {
        for key in config.public_keys {
            assert_eq!(key.to_string().parse::<TesseraKey>(), Ok(key));
        }
    }
});
