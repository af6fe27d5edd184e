//! Signing and verifying membership record envelopes (docs/DESIGN.md section 6).
//!
//! The signature is ECDSA P-256 with SHA-256 (ASN.1 DER) over a domain-separated input:
//!
//! ```text
//! "fedgw-envelope-v1" 0x00 <payload type> 0x00 <payload>
//! ```
//!
//! so a signature over one payload type can never be replayed as another. The signer presents one
//! certificate: the consortium root (root-signed kinds), or an org CA signed by that root, whose
//! single permitted DNS subtree `<org>.<domain>` names the org it speaks for.

use std::time::SystemTime;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use x509_parser::extensions::GeneralName;

use crate::names;

const DOMAIN: &[u8] = b"fedgw-envelope-v1";

/// Who signed an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Signer {
    /// The consortium root.
    Root,
    /// An org, through its root-signed org CA.
    Org(String),
}

/// Why an envelope signature or signer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The signer chain is not exactly one certificate.
    #[error("signer chain must hold exactly one certificate")]
    ChainLength,
    /// The signer certificate does not parse.
    #[error("signer certificate does not parse")]
    Parse,
    /// The signer certificate is neither the root nor an org CA signed by it.
    #[error("signer is not the consortium root or an org CA it signed")]
    UntrustedSigner,
    /// The org CA is outside its validity period.
    #[error("signer certificate is expired or not yet valid")]
    Validity,
    /// The org CA does not carry exactly one permitted DNS subtree under the domain.
    #[error("signer org CA has no usable name constraint")]
    NoOrg,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// The signing key could not be loaded.
    #[error("invalid signing key")]
    Key,
}

/// The bytes a signature covers.
pub fn signing_input(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(DOMAIN.len() + payload_type.len() + payload.len() + 2);
    v.extend_from_slice(DOMAIN);
    v.push(0);
    v.extend_from_slice(payload_type.as_bytes());
    v.push(0);
    v.extend_from_slice(payload);
    v
}

/// A key that signs envelopes, with the certificate that goes in the signer chain.
pub struct EnvelopeSigner {
    key: EcdsaKeyPair,
    cert: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for EnvelopeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvelopeSigner").finish_non_exhaustive()
    }
}

impl EnvelopeSigner {
    /// A signer from a PKCS#8 DER P-256 key and its certificate (DER).
    pub fn new(pkcs8: &[u8], cert: Vec<u8>) -> Result<Self, EnvelopeError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
            .map_err(|_| EnvelopeError::Key)?;
        Ok(Self {
            key,
            cert,
            rng: SystemRandom::new(),
        })
    }

    /// The signer's certificate, DER.
    pub fn cert(&self) -> &[u8] {
        &self.cert
    }

    /// The public key, uncompressed SEC1 point.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Signs `payload` of `payload_type`; returns the ASN.1 DER signature.
    pub fn sign(&self, payload_type: &str, payload: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        self.key
            .sign(&self.rng, &signing_input(payload_type, payload))
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| EnvelopeError::Key)
    }
}

/// Verifies envelope signers against one consortium root.
#[derive(Debug, Clone)]
pub struct SignerVerifier {
    root_der: Vec<u8>,
    root_spki_key: Vec<u8>,
    domain: String,
}

fn spki_key(cert_der: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|_| EnvelopeError::Parse)?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

impl SignerVerifier {
    /// A verifier for envelopes of the consortium with root `root_der` and `domain`.
    pub fn new(root_der: Vec<u8>, domain: &str) -> Result<Self, EnvelopeError> {
        let root_spki_key = spki_key(&root_der)?;
        Ok(Self {
            root_der,
            root_spki_key,
            domain: domain.to_owned(),
        })
    }

    /// Identifies the signer certificate (DER) and returns its public key (SEC1 point): the
    /// root itself, or an org CA whose signature by the root verifies, valid at `now`, with one
    /// permitted DNS subtree `<org>.<domain>`.
    pub fn identify(
        &self,
        cert_der: &[u8],
        now: SystemTime,
    ) -> Result<(Signer, Vec<u8>), EnvelopeError> {
        if cert_der == self.root_der.as_slice() {
            return Ok((Signer::Root, self.root_spki_key.clone()));
        }
        let (_, cert) =
            x509_parser::parse_x509_certificate(cert_der).map_err(|_| EnvelopeError::Parse)?;
        let tbs = cert.tbs_certificate.as_ref();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.root_spki_key)
            .verify(tbs, &cert.signature_value.data)
            .map_err(|_| EnvelopeError::UntrustedSigner)?;
        let unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let validity = cert.validity();
        if unix < validity.not_before.timestamp() || unix > validity.not_after.timestamp() {
            return Err(EnvelopeError::Validity);
        }
        let org = org_of_ca(&cert, &self.domain).ok_or(EnvelopeError::NoOrg)?;
        Ok((
            Signer::Org(org),
            cert.public_key().subject_public_key.data.to_vec(),
        ))
    }

    /// Verifies `signature` over (`payload_type`, `payload`) by the key `public_key` (a SEC1
    /// point returned by [`Self::identify`]).
    pub fn verify(
        public_key: &[u8],
        payload_type: &str,
        payload: &[u8],
        signature: &[u8],
    ) -> Result<(), EnvelopeError> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key)
            .verify(&signing_input(payload_type, payload), signature)
            .map_err(|_| EnvelopeError::Signature)
    }
}

/// The org an org CA certificate (DER) speaks for: the `<org>` of its single permitted DNS
/// subtree `<org>.<domain>` (no excluded subtrees). `None` for anything else, including a
/// certificate that does not parse.
pub fn org_of_org_ca(cert_der: &[u8], domain: &str) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    org_of_ca(&cert, domain)
}

/// [`org_of_org_ca`] on a parsed certificate.
fn org_of_ca(cert: &x509_parser::certificate::X509Certificate<'_>, domain: &str) -> Option<String> {
    let nc = cert.name_constraints().ok()??;
    let permitted = nc.value.permitted_subtrees.as_ref()?;
    if permitted.len() != 1 || nc.value.excluded_subtrees.is_some() {
        return None;
    }
    let GeneralName::DNSName(name) = permitted[0].base else {
        return None;
    };
    let org = name.strip_suffix(domain)?.strip_suffix('.')?;
    names::validate_label("org", org).ok()?;
    Some(org.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateAuthority;
    use crate::pki::{generate_key, org_ca_csr};

    const D: &str = "acme.example";

    #[test]
    fn org_and_root_signatures_verify_and_tampering_fails() {
        let now = SystemTime::now();
        let root = CertificateAuthority::new_root("acme", D, now).expect("root");
        let key = generate_key().expect("key");
        let csr = org_ca_csr(&key, "org2").expect("csr");
        let org_ca = root.sign_org_ca(&csr, "acme", "org2", D, now).expect("ca");
        let v = SignerVerifier::new(root.cert().to_vec(), D).expect("verifier");

        let signer = EnvelopeSigner::new(&key.serialize_der(), org_ca.to_vec()).expect("signer");
        let sig = signer.sign("t", b"payload").expect("sign");
        let (who, pk) = v.identify(signer.cert(), now).expect("identify");
        assert_eq!(who, Signer::Org("org2".into()));
        assert!(SignerVerifier::verify(&pk, "t", b"payload", &sig).is_ok());
        assert_eq!(
            SignerVerifier::verify(&pk, "t", b"payloaD", &sig),
            Err(EnvelopeError::Signature)
        );
        assert_eq!(
            SignerVerifier::verify(&pk, "u", b"payload", &sig),
            Err(EnvelopeError::Signature)
        );

        let root_signer = EnvelopeSigner::new(
            &crate::pki::key_from_pem(&root.key_pem())
                .expect("root key")
                .serialize_der(),
            root.cert().to_vec(),
        )
        .expect("root signer");
        let (who, pk) = v.identify(root_signer.cert(), now).expect("identify root");
        assert_eq!(who, Signer::Root);
        let sig = root_signer.sign("t", b"x").expect("sign");
        assert!(SignerVerifier::verify(&pk, "t", b"x", &sig).is_ok());
    }

    #[test]
    fn foreign_and_expired_signers_are_refused() {
        let now = SystemTime::now();
        let root = CertificateAuthority::new_root("acme", D, now).expect("root");
        let evil = CertificateAuthority::new_root("acme", D, now).expect("evil");
        let key = generate_key().expect("key");
        let csr = org_ca_csr(&key, "org2").expect("csr");
        let foreign = evil.sign_org_ca(&csr, "acme", "org2", D, now).expect("ca");
        let v = SignerVerifier::new(root.cert().to_vec(), D).expect("verifier");
        assert_eq!(
            v.identify(&foreign, now),
            Err(EnvelopeError::UntrustedSigner)
        );
        assert_eq!(
            v.identify(evil.cert(), now),
            Err(EnvelopeError::UntrustedSigner)
        );
        assert_eq!(v.identify(b"junk", now), Err(EnvelopeError::Parse));
        let ours = root.sign_org_ca(&csr, "acme", "org2", D, now).expect("ca");
        let later = now + crate::pki::ORG_CA_LIFETIME + std::time::Duration::from_secs(86400);
        assert_eq!(v.identify(&ours, later), Err(EnvelopeError::Validity));
        // a leaf (no name constraint) signed by an org CA is not a signer either
        let other = SignerVerifier::new(evil.cert().to_vec(), "other.example").expect("v");
        assert_eq!(other.identify(&foreign, now), Err(EnvelopeError::NoOrg));
    }
}
