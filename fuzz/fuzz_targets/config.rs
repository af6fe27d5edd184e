//! Config::parse on arbitrary text (fedgw.toml): errors, never panics.
#![no_main]

use fedgw_gateway::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = Config::parse(text, std::path::Path::new("fuzz.toml")) {
        let again = Config::parse(&config.to_toml(), std::path::Path::new("fuzz.toml"));
        assert_eq!(again.ok(), Some(config));
    }
});
