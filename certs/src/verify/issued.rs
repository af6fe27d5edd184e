//! The gateway leaves the consortium's cert records name (certificate transparency), for
//! [`super::PeerVerifier`]: with a grace period set, a peer gateway leaf older than the grace
//! period whose SubjectPublicKeyInfo no cert record names is refused
//! ([`super::PeerRejection::NotPublished`]). Off (grace 0) by default: gateways of earlier
//! versions publish no cert records.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::Digest;

use super::PeerRejection;

#[derive(Debug, Default)]
struct State {
    grace: Duration,
    spkis: BTreeSet<(String, [u8; 32])>,
}

/// The SHA-256 hashes of the SubjectPublicKeyInfo of every published certificate, each with the
/// org that published it (a record of one org never vouches for another's leaf), and the grace
/// period after a leaf's notBefore before an unpublished one is refused. Shared by every verifier
/// built with it (like [`super::RevocationSet`]): a change takes effect at the next handshake.
#[derive(Debug, Clone, Default)]
pub struct IssuedSet(Arc<RwLock<Arc<State>>>);

impl IssuedSet {
    fn state(&self) -> Arc<State> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&State) -> State) {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        *guard = Arc::new(f(&guard));
    }

    /// Sets the grace period; zero turns the check off.
    pub fn set_grace(&self, grace: Duration) {
        self.update(|s| State {
            grace,
            spkis: s.spkis.clone(),
        });
    }

    /// Replaces the published (org, SPKI hash) pairs.
    pub fn replace(&self, spkis: BTreeSet<(String, [u8; 32])>) {
        self.update(|s| State {
            grace: s.grace,
            spkis,
        });
    }

    /// Whether the check is on.
    pub fn enforced(&self) -> bool {
        !self.state().grace.is_zero()
    }

    /// Checks a verified leaf (DER) at `now_unix` seconds: accepted when the check is off, the
    /// leaf was issued (notBefore plus [`crate::pki::CLOCK_SKEW`]) less than the grace period
    /// ago, or a cert record names its SPKI. Within the grace period a new gateway's sync
    /// session carries its record to its peers.
    pub fn check(&self, leaf: &[u8], org: &str, now_unix: u64) -> Result<(), PeerRejection> {
        let state = self.state();
        if state.grace.is_zero() {
            return Ok(());
        }
        let (_, cert) =
            x509_parser::parse_x509_certificate(leaf).map_err(|_| PeerRejection::NotPublished {
                serial: String::new(),
            })?;
        // leaves are backdated by the clock-skew allowance: the grace runs from the issue time
        let issued = u64::try_from(cert.validity().not_before.timestamp())
            .unwrap_or(0)
            .saturating_add(crate::pki::CLOCK_SKEW.as_secs());
        if now_unix < issued.saturating_add(state.grace.as_secs()) {
            return Ok(());
        }
        let spki: [u8; 32] = sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw).into();
        if state.spkis.contains(&(org.to_owned(), spki)) {
            return Ok(());
        }
        Err(PeerRejection::NotPublished {
            serial: cert
                .tbs_certificate
                .raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::CertificateAuthority;
    use crate::pki::{generate_key, org_ca_csr};

    const D: &str = "acme.example";

    /// A gateway leaf of org2 and its issue time (notBefore plus the clock-skew allowance).
    fn gateway_leaf() -> (Vec<u8>, u64) {
        let now = SystemTime::now();
        let root = CertificateAuthority::new_root("acme", D, now).expect("root");
        let key = generate_key().expect("key");
        let csr = org_ca_csr(&key, "org2").expect("csr");
        let cert = root.sign_org_ca(&csr, "acme", "org2", D, now).expect("ca");
        let ca = CertificateAuthority::from_parts(cert, &key.serialize_pem()).expect("ca");
        let leaf = ca
            .issue_gateway_leaf("dc1", "org2", D, Duration::from_secs(86_400), now)
            .expect("leaf");
        let der = leaf.chain[0].to_vec();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let not_before =
            u64::try_from(parsed.validity().not_before.timestamp()).expect("after 1970");
        (der, not_before + crate::pki::CLOCK_SKEW.as_secs())
    }

    #[test]
    fn off_by_default_and_within_the_grace_period() {
        let (leaf, nb) = gateway_leaf();
        let set = IssuedSet::default();
        assert!(!set.enforced());
        assert!(set.check(&leaf, "org2", nb + 1_000_000).is_ok());
        set.set_grace(Duration::from_secs(600));
        assert!(set.enforced());
        assert!(set.check(&leaf, "org2", nb + 599).is_ok());
    }

    #[test]
    fn an_unpublished_leaf_is_refused_after_the_grace_period_and_a_published_one_is_not() {
        let (leaf, nb) = gateway_leaf();
        let set = IssuedSet::default();
        set.set_grace(Duration::from_secs(600));
        let e = set.check(&leaf, "org2", nb + 600).expect_err("unpublished");
        assert!(matches!(e, PeerRejection::NotPublished { .. }));
        assert!(
            e.to_string().contains("require_issued_certs_after_s = 0"),
            "{e}"
        );
        let spki = crate::pki::spki_sha256(&leaf).expect("spki");
        // another org's record does not vouch for it
        set.replace([("org3".to_owned(), spki)].into());
        assert!(set.check(&leaf, "org2", nb + 600).is_err());
        set.replace([("org2".to_owned(), spki)].into());
        assert!(set.check(&leaf, "org2", nb + 600).is_ok());
        // the grace period survives a replacement of the set, and the set a new grace
        set.set_grace(Duration::from_secs(60));
        assert!(set.check(&leaf, "org2", nb + 600).is_ok());
        set.replace(BTreeSet::new());
        assert!(set.check(&leaf, "org2", nb + 600).is_err());
    }
}
