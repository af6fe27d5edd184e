//! The root signing an org CA from an arbitrary CSR (what a joiner sends): errors, never panics;
//! the gateway key usage check on the same bytes as a certificate answers, never panics.
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use fedgw_certs::CertificateAuthority;
use libfuzzer_sys::fuzz_target;

fn root() -> &'static CertificateAuthority {
    static ROOT: OnceLock<CertificateAuthority> = OnceLock::new();
    ROOT.get_or_init(|| {
        CertificateAuthority::new_root("acme", "acme.test", SystemTime::now()).expect("root")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = root().sign_org_ca(data, "acme", "org2", "acme.test", SystemTime::now());
    let _ = fedgw_certs::pki::is_gateway_leaf(data);
});
