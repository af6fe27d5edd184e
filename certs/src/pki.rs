//! Certificate issuance for the consortium PKI (docs/DESIGN.md section 4).
//!
//! ```text
//! consortium root CA (self-signed, ECDSA P-256, created by `fedgw init`)
//!  └─ org CA  (one per admitted org; pathLen=0; DNS name constraint: permitted <org>.<domain>)
//!      ├─ gateway leaf  DNS gw-<site>.<org>.<domain>, URI spiffe://<domain>/org/<org>/gw/<site>,
//!      │                EKU serverAuth, clientAuth and fedgw-gateway ([`GATEWAY_EKU_OID`])
//!      └─ node leaf     DNS names under <org>.<domain> (Tessera / Fabric TLS), never `gw-*`;
//!                       EKU serverAuth, clientAuth
//! ```
//!
//! Only a leaf with the fedgw-gateway extended key usage speaks for a gateway
//! ([`crate::PeerVerifier`] refuses any other on every federation protocol), so a node
//! certificate cannot pass for one, whatever its names.
//!
//! Everything here takes values and returns values: callers read and write files.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, NameConstraints, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};

use crate::names::{self, NameError};

/// Lifetime of the consortium root CA: 10 years.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of an org CA: 5 years.
pub const ORG_CA_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Default lifetime of gateway and node leaves: 24 hours (renewed at half-life).
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Backdating of `notBefore`, to tolerate clock skew between sites.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The fedgw-gateway extended key usage (RFC 5280 section 4.2.1.12), carried by gateway leaves
/// only: OID `2.25.276128982336989672818460443231534827508`, an OID under the `2.25` arc made
/// from the UUID `cfbc81ef-6d03-46e0-b227-68ec3565c7f4` (ITU-T X.667 section 6.3, so no
/// registration is needed). These are the OID's DER contents octets, without tag and length.
pub const GATEWAY_EKU_OID: &[u8] = &[
    0x69, 0x83, 0x9f, 0xbc, 0xc0, 0xfb, 0xed, 0xd0, 0x9a, 0x9b, 0xc1, 0xb2, 0x93, 0xda, 0x9d, 0xc3,
    0xab, 0x97, 0x8f, 0x74,
];

/// The dotted form of [`GATEWAY_EKU_OID`].
pub const GATEWAY_EKU_OID_TEXT: &str = "2.25.276128982336989672818460443231534827508";

/// The leftmost-label prefix reserved for gateway names (`gw-<site>.<org>.<domain>`): node
/// leaves never carry a name that starts with it.
pub const RESERVED_NODE_PREFIX: &str = "gw-";

/// Errors from certificate issuance and parsing.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A name to be certified is not a valid consortium name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A node certificate asked for a DNS name outside its org's subtree.
    #[error("name {name:?} is outside the org subtree {subtree:?}")]
    OutsideSubtree {
        /// The requested name.
        name: String,
        /// The org's subtree (`<org>.<domain>`).
        subtree: String,
    },
    /// A node certificate asked for a name reserved for gateways (`gw-*`).
    #[error("name {0:?} is reserved for gateways (names starting with \"gw-\")")]
    ReservedName(String),
    /// The certificate signing request could not be parsed, carried an unsupported extension, or
    /// its self-signature is invalid.
    #[error("invalid certificate signing request")]
    Csr(#[source] rcgen::Error),
    /// The CSR's key is not ECDSA P-256.
    #[error("certificate signing request key must be ECDSA P-256")]
    CsrKeyAlgorithm,
    /// A private key could not be parsed or is not ECDSA P-256.
    #[error("invalid private key")]
    Key(#[source] rcgen::Error),
    /// A certificate could not be parsed.
    #[error("invalid certificate")]
    Certificate(#[source] rcgen::Error),
    /// rcgen failed to build or sign a certificate.
    #[error("certificate generation failed")]
    Generate(#[source] rcgen::Error),
}

/// A certificate authority: its DER certificate and its signing key.
pub struct CertificateAuthority {
    cert: CertificateDer<'static>,
    key: KeyPair,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_len", &self.cert.len())
            .finish_non_exhaustive()
    }
}

/// A leaf certificate chain (leaf first, then its org CA) with its PKCS#8 private key.
pub struct IssuedLeaf {
    /// `[leaf, org CA]`, DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key, PKCS#8 DER.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// When the leaf stops being valid.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for IssuedLeaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedLeaf")
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Generates a fresh ECDSA P-256 key pair.
pub fn generate_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::Generate)
}

/// Parses a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`), ECDSA P-256 only.
pub fn key_from_pem(pem: &str) -> Result<KeyPair, PkiError> {
    let key = KeyPair::from_pem(pem).map_err(PkiError::Key)?;
    if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(PkiError::Key(rcgen::Error::UnsupportedSignatureAlgorithm));
    }
    Ok(key)
}

/// Encodes DER certificates as concatenated PEM blocks.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for cert in certs {
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cert);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            // chunks of an ASCII string are ASCII
            let _ = writeln!(out, "{}", String::from_utf8_lossy(line));
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Decodes every `CERTIFICATE` block of a PEM text, in order. Other block types are skipped.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| PkiError::Certificate(rcgen::Error::CouldNotParseCertificate))?;
    if certs.is_empty() {
        return Err(PkiError::Certificate(
            rcgen::Error::CouldNotParseCertificate,
        ));
    }
    Ok(certs)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // and no leading zero byte, so the encoding is always 16 octets
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, now: SystemTime, lifetime: Duration) -> SystemTime {
    let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(now);
    let not_after = now + lifetime;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    not_after
}

fn dn(cn: &str, consortium: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, consortium);
    dn.push(DnType::CommonName, cn);
    dn
}

fn ia5(name: &str) -> Result<rcgen::string::Ia5String, PkiError> {
    name.try_into().map_err(PkiError::Generate)
}

impl CertificateAuthority {
    /// Creates a consortium root CA for `consortium` (a label, e.g. `acme`) owning `domain`
    /// (e.g. `acme.example`): self-signed, ECDSA P-256, valid [`ROOT_LIFETIME`] from `now`.
    pub fn new_root(consortium: &str, domain: &str, now: SystemTime) -> Result<Self, PkiError> {
        names::validate_label("consortium", consortium)?;
        names::validate_domain("domain", domain)?;
        let key = generate_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("{consortium} root CA ({domain})"), consortium);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        validity(&mut params, now, ROOT_LIFETIME);
        let cert = params.self_signed(&key).map_err(PkiError::Generate)?;
        Ok(Self {
            cert: cert.der().clone(),
            key,
        })
    }

    /// Loads a CA from its DER certificate and PKCS#8 PEM key.
    pub fn from_parts(cert: CertificateDer<'static>, key_pem: &str) -> Result<Self, PkiError> {
        let key = key_from_pem(key_pem)?;
        Ok(Self { cert, key })
    }

    /// The CA certificate, DER.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A signer for membership record envelopes with this CA's key and certificate.
    pub fn envelope_signer(
        &self,
    ) -> Result<crate::envelope::EnvelopeSigner, crate::envelope::EnvelopeError> {
        crate::envelope::EnvelopeSigner::new(&self.key.serialize_der(), self.cert.to_vec())
    }

    /// The CA private key as PKCS#8 PEM. Callers write it with mode 0600.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_der(&self.cert, &self.key).map_err(PkiError::Certificate)
    }

    /// Signs an org CA from the org's CSR (PKCS#10, DER).
    ///
    /// Only the CSR's public key and self-signature are used: subject, SANs, basic constraints and
    /// any name constraints it asks for are ignored. The issued CA has `pathLen=0`, key usages
    /// keyCertSign+cRLSign, and exactly one permitted DNS subtree, `<org>.<domain>`, taken from
    /// the arguments (the invite), never from the CSR. Valid [`ORG_CA_LIFETIME`] from `now`.
    ///
    /// Errors: [`PkiError::Csr`] for an unparsable CSR or a bad self-signature,
    /// [`PkiError::CsrKeyAlgorithm`] for a key other than ECDSA P-256.
    pub fn sign_org_ca(
        &self,
        csr_der: &[u8],
        consortium: &str,
        org: &str,
        domain: &str,
        now: SystemTime,
    ) -> Result<CertificateDer<'static>, PkiError> {
        names::validate_label("org", org)?;
        names::validate_domain("domain", domain)?;
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(PkiError::Csr)?;
        if csr.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::CsrKeyAlgorithm);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("{org} CA"), consortium);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName(names::org_subtree(org, domain))],
            excluded_subtrees: vec![],
        });
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, now, ORG_CA_LIFETIME);
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer()?)
        .map_err(PkiError::Generate)?;
        Ok(signed.der().clone())
    }

    /// Issues a gateway leaf for `site` of `org`: DNS SAN `gw-<site>.<org>.<domain>`, URI SAN
    /// `spiffe://<domain>/org/<org>/gw/<site>`, EKU serverAuth+clientAuth+fedgw-gateway
    /// ([`GATEWAY_EKU_OID`]), a fresh P-256 key, valid `lifetime` from `now`. `self` must be
    /// the org's CA.
    pub fn issue_gateway_leaf(
        &self,
        site: &str,
        org: &str,
        domain: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedLeaf, PkiError> {
        self.issue_replica_leaf(site, "", org, domain, lifetime, now)
    }

    /// As [`Self::issue_gateway_leaf`] for replica `replica` of the site (empty: the site's first
    /// gateway): the same DNS SAN, the URI SAN
    /// `spiffe://<domain>/org/<org>/gw/<site>/replica/<replica>` ([`names::replica_spiffe_id`]).
    pub fn issue_replica_leaf(
        &self,
        site: &str,
        replica: &str,
        org: &str,
        domain: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedLeaf, PkiError> {
        names::validate_label("site", site)?;
        names::validate_label("org", org)?;
        if !replica.is_empty() {
            names::validate_label("replica", replica)?;
        }
        let dns = names::gateway_dns_name(site, org, domain);
        let spiffe = names::replica_spiffe_id(site, replica, org, domain);
        let sans = vec![SanType::DnsName(ia5(&dns)?), SanType::URI(ia5(&spiffe)?)];
        self.issue_leaf(&dns, sans, LeafKind::Gateway, lifetime, now)
    }

    /// Issues a node leaf (Tessera / Fabric TLS) with the given DNS names, each of which must be
    /// `<org>.<domain>` or below it. EKU serverAuth+clientAuth, fresh P-256 key.
    ///
    /// Errors: [`PkiError::ReservedName`] for a name whose leftmost label starts with `gw-`
    /// (gateway names), [`PkiError::OutsideSubtree`] for a name outside the org's subtree.
    pub fn issue_node_leaf(
        &self,
        dns_names: &[String],
        org: &str,
        domain: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedLeaf, PkiError> {
        let (cn, sans) = node_sans(dns_names, org, domain)?;
        self.issue_leaf(&cn, sans, LeafKind::Node, lifetime, now)
    }

    /// Issues a Fabric signing identity (an MSP `signcerts` certificate) with the given DNS
    /// names, checked as for [`Self::issue_node_leaf`]. The subject is `CN=<first name>,
    /// OU=<node_ou>` (`node_ou` is Fabric's NodeOU: `peer`, `orderer`, `client` or `admin`);
    /// key usage digitalSignature and no extended key usage, as Fabric's cryptogen issues them.
    /// The DNS SANs are needed: Fabric refuses a leaf without SANs whose CN looks like a host
    /// name when a CA above it carries a name constraint, as the org CA does (docs/fabric.md).
    pub fn issue_fabric_identity(
        &self,
        dns_names: &[String],
        node_ou: &str,
        org: &str,
        domain: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedLeaf, PkiError> {
        let (cn, sans) = node_sans(dns_names, org, domain)?;
        let kind = LeafKind::FabricIdentity {
            ou: node_ou.to_owned(),
        };
        self.issue_leaf(&cn, sans, kind, lifetime, now)
    }

    /// Issues a leaf with arbitrary SANs. Crate-internal: the public issuers validate names; tests
    /// use this to build certificates a misbehaving CA could produce.
    pub(crate) fn issue_leaf(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        kind: LeafKind,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedLeaf, PkiError> {
        let key = generate_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let LeafKind::FabricIdentity { ou } = &kind {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, ou.as_str());
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        match kind {
            LeafKind::FabricIdentity { .. } => {}
            LeafKind::Node => {
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
            }
            // rcgen takes OID arcs as u64, too small for a 2.25 (UUID) arc: the extension is
            // written whole
            LeafKind::Gateway => params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    OID_EXT_KEY_USAGE,
                    gateway_eku_der(),
                )),
        }
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let not_after = validity(&mut params, now, lifetime);
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(PkiError::Generate)?;
        Ok(IssuedLeaf {
            chain: vec![cert.der().clone(), self.cert.clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            not_after,
        })
    }
}

/// Checks node DNS names (each `<org>.<domain>` or below, never `gw-*`) and returns the
/// common name (the first name, or the org subtree) and the SANs.
fn node_sans(
    dns_names: &[String],
    org: &str,
    domain: &str,
) -> Result<(String, Vec<SanType>), PkiError> {
    let subtree = names::org_subtree(org, domain);
    let mut sans = Vec::with_capacity(dns_names.len());
    for name in dns_names {
        names::validate_domain("DNS name", name)?;
        if name.starts_with(RESERVED_NODE_PREFIX) {
            return Err(PkiError::ReservedName(name.clone()));
        }
        if names::org_of_dns_name(name, domain) != Some(org) && *name != subtree {
            return Err(PkiError::OutsideSubtree {
                name: name.clone(),
                subtree,
            });
        }
        sans.push(SanType::DnsName(ia5(name)?));
    }
    let cn = dns_names
        .first()
        .cloned()
        .unwrap_or_else(|| subtree.clone());
    Ok((cn, sans))
}

/// Which kind of leaf [`CertificateAuthority::issue_leaf`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeafKind {
    /// A gateway: EKU serverAuth, clientAuth and fedgw-gateway.
    Gateway,
    /// A node: EKU serverAuth and clientAuth.
    Node,
    /// A Fabric signing identity: `OU=<ou>` in the subject, no EKU.
    FabricIdentity {
        /// The NodeOU (`peer`, `orderer`, `client`, `admin`).
        ou: String,
    },
}

/// id-ce-extKeyUsage (RFC 5280 section 4.2.1.12).
const OID_EXT_KEY_USAGE: &[u64] = &[2, 5, 29, 37];

/// The DER of `ExtKeyUsageSyntax ::= SEQUENCE { id-kp-serverAuth, id-kp-clientAuth,
/// fedgw-gateway }` (RFC 5280 section 4.2.1.12); every length fits one octet.
fn gateway_eku_der() -> Vec<u8> {
    const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
    const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
    let mut body = Vec::with_capacity(48);
    for oid in [SERVER_AUTH, CLIENT_AUTH, GATEWAY_EKU_OID] {
        body.push(0x06);
        body.push(oid.len() as u8);
        body.extend_from_slice(oid);
    }
    let mut der = vec![0x30, body.len() as u8];
    der.extend_from_slice(&body);
    der
}

/// Whether a certificate (DER) carries the fedgw-gateway extended key usage
/// ([`GATEWAY_EKU_OID`]). An unparsable certificate does not.
pub fn is_gateway_leaf(cert: &[u8]) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return false;
    };
    matches!(
        parsed.extended_key_usage(),
        Ok(Some(eku)) if eku.value.other.iter().any(|oid| oid.as_bytes() == GATEWAY_EKU_OID)
    )
}

/// Builds a PKCS#10 CSR (DER) for an org CA key. The subject is informational: the root ignores
/// everything but the public key.
pub fn org_ca_csr(key: &KeyPair, org: &str) -> Result<Vec<u8>, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{org} CA"));
    let csr = params.serialize_request(key).map_err(PkiError::Generate)?;
    Ok(csr.der().to_vec())
}

/// A key pair's SubjectPublicKeyInfo, DER (what a certificate for it carries).
pub fn spki_der(key: &KeyPair) -> Vec<u8> {
    rcgen::PublicKeyData::subject_public_key_info(key)
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo, as used in join token pins.
pub fn spki_sha256(cert: &[u8]) -> Result<[u8; 32], PkiError> {
    use sha2::Digest;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|_| PkiError::Certificate(rcgen::Error::CouldNotParseCertificate))?;
    Ok(sha2::Sha256::digest(parsed.tbs_certificate.subject_pki.raw).into())
}

/// Returns a certificate's `notAfter`.
pub fn not_after(cert: &[u8]) -> Result<SystemTime, PkiError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|_| PkiError::Certificate(rcgen::Error::CouldNotParseCertificate))?;
    let secs = parsed.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

#[cfg(test)]
mod tests;
