//! A membership record envelope as it arrives from a peer: decode, signer, signature, fields and
//! authorisation checks. Typed refusals, never a panic.
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use fedgw_certs::CertificateAuthority;
use fedgw_certs::envelope::SignerVerifier;
use fedgw_gateway::membership::record;
use libfuzzer_sys::fuzz_target;

fn lookup() -> &'static (SignerVerifier, SystemTime) {
    static L: OnceLock<(SignerVerifier, SystemTime)> = OnceLock::new();
    L.get_or_init(|| {
        let root = CertificateAuthority::new_root("acme", "acme.test", SystemTime::now()).expect("root");
        (
            SignerVerifier::new(root.cert().to_vec(), "acme.test").expect("verifier"),
            SystemTime::now(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = record::verify(data, lookup(), "acme.test");
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = record::RecordKey::parse(s);
    }
});
