//! The identity of a federation peer, read from its verified leaf certificate.

use crate::names;

/// Why a certificate does not carry a usable consortium identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The certificate could not be parsed.
    #[error("unparsable certificate")]
    Parse,
    /// No DNS subjectAltName below the consortium domain.
    #[error("no DNS name under the consortium domain")]
    NoName,
    /// The DNS names belong to more than one org.
    #[error("DNS names name more than one org")]
    MixedOrgs,
    /// A SPIFFE URI SAN names another trust domain or org than the DNS SAN.
    #[error("SPIFFE ID {0:?} does not match the certificate's org")]
    SpiffeMismatch(String),
}

/// Who is on the other end of a verified federation connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The org, from the verified DNS SAN (`<...>.<org>.<domain>`).
    pub org: String,
    /// The first DNS SAN, e.g. `gw-dc1.org2.acme.example`.
    pub dns_name: String,
    /// The SPIFFE URI SAN, if any.
    pub spiffe_id: Option<String>,
}

/// Reads the identity from a leaf certificate (DER). Does not verify the chain: call it on
/// certificates rustls has already verified, or from a verifier after chain validation.
pub fn peer_identity(leaf: &[u8], domain: &str) -> Result<PeerIdentity, IdentityError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|_| IdentityError::Parse)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Parse)?
        .ok_or(IdentityError::NoName)?;
    let mut org: Option<&str> = None;
    let mut dns_name = None;
    let mut spiffe_id = None;
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(dns) => {
                let o = names::org_of_dns_name(dns, domain).ok_or(IdentityError::NoName)?;
                if org.is_some_and(|prev| prev != o) {
                    return Err(IdentityError::MixedOrgs);
                }
                org = Some(o);
                dns_name.get_or_insert_with(|| dns.to_string());
            }
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                spiffe_id = Some(uri.to_string());
            }
            _ => {}
        }
    }
    let org = org.ok_or(IdentityError::NoName)?.to_owned();
    if let Some(id) = &spiffe_id
        && names::org_of_spiffe_id(id, domain) != Some(org.as_str())
    {
        return Err(IdentityError::SpiffeMismatch(id.clone()));
    }
    Ok(PeerIdentity {
        org,
        dns_name: dns_name.ok_or(IdentityError::NoName)?,
        spiffe_id,
    })
}
