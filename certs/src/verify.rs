//! Certificate verifiers for federation links and for the join handshake.
//!
//! [`PeerVerifier`] serves both sides of a federation connection: it validates the chain to the
//! consortium root with rustls-webpki (which enforces the org CAs' DNS name constraints), reads
//! the peer's org from its verified DNS SAN ([`crate::identity`]), requires the fedgw-gateway
//! extended key usage ([`crate::pki::GATEWAY_EKU_OID`]: only gateways take part in federation
//! and tunnels, never node certificates), and refuses orgs in the current [`RevocationSet`]. [`PinnedRootVerifier`] is the joiner's verifier: it has no root
//! certificate yet, only the SHA-256 pin of the root's public key from the token.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::identity::{self, IdentityError, PeerIdentity};

mod issued;
pub use issued::IssuedSet;

/// The orgs whose certificates are refused. Shared by every verifier built from it: replacing
/// the set takes effect for the next handshake, with no config rebuild.
#[derive(Debug, Clone, Default)]
pub struct RevocationSet(Arc<RwLock<Arc<BTreeSet<String>>>>);

impl RevocationSet {
    /// Replaces the set of revoked orgs.
    pub fn replace(&self, orgs: BTreeSet<String>) {
        // a poisoned lock only means a writer panicked mid-assignment of an Arc: the value is whole
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(orgs);
    }

    /// Whether `org` is revoked.
    pub fn contains(&self, org: &str) -> bool {
        self.snapshot().contains(org)
    }

    /// The current set.
    pub fn snapshot(&self) -> Arc<BTreeSet<String>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Why a peer certificate was refused, beyond what webpki reports.
#[derive(Debug, thiserror::Error)]
pub enum PeerRejection {
    /// The certificate verified but carries no usable identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The certificate is not a gateway's: it lacks the fedgw-gateway extended key usage (a
    /// node certificate, or a gateway leaf issued before gateways carried it).
    #[error("not a gateway certificate (no fedgw-gateway extended key usage)")]
    NotGateway,
    /// The peer is not the org the dialer expected.
    #[error("expected org {expected:?}, peer is {actual:?}")]
    WrongOrg {
        /// The org the dialer asked for.
        expected: String,
        /// The org in the certificate.
        actual: String,
    },
    /// The pinned root key is not in the presented chain, or did not sign it.
    #[error("the server's chain does not end at the pinned consortium root")]
    PinMismatch,
    /// The gateway leaf is older than `[federation] require_issued_certs_after_s` and no cert
    /// record of its org names it.
    #[error(
        "gateway certificate {serial} was never published as a cert record by its org; upgrade that gateway so that it publishes its certificates, or set [federation] require_issued_certs_after_s = 0"
    )]
    NotPublished {
        /// The leaf's serial, hex.
        serial: String,
    },
}

/// Why a root certificate cannot anchor a [`PeerVerifier`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    /// The root's subject is empty: a TLS 1.3 CertificateRequest could not name it (RFC 8446
    /// section 4.2.4 allows no empty DistinguishedName).
    #[error("the consortium root certificate has an empty subject")]
    EmptySubject,
}

fn rejection(e: PeerRejection) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

/// Maps a webpki error to the rustls error a handshake reports, keeping the common cases typed.
fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let ce = match e {
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::CertExpired { .. } => CertificateError::Expired,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertNotValidForName(_) => CertificateError::NotValidForName,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

/// Verifies federation peers (both as a TLS client and as a TLS server).
#[derive(Debug)]
pub struct PeerVerifier {
    root: CertificateDer<'static>,
    root_subject: Vec<DistinguishedName>,
    domain: String,
    revoked: RevocationSet,
    issued: IssuedSet,
    expected_org: Option<String>,
    any_server_name: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    /// A verifier trusting `root` for identities under `domain`, refusing orgs in `revoked`.
    ///
    /// As a server it names the root in the CertificateRequest's `certificate_authorities`
    /// extension: the root's whole DER `Name`, outer SEQUENCE included (RFC 8446 section
    /// 4.2.4; webpki's anchor holds only the SEQUENCE's contents). Errors: the root does not
    /// parse, or its subject is empty ([`RootError::EmptySubject`], inside
    /// `CertificateError::Other`).
    pub fn new(
        root: CertificateDer<'static>,
        domain: &str,
        revoked: RevocationSet,
        provider: &CryptoProvider,
    ) -> Result<Self, rustls::Error> {
        let anchor = webpki::anchor_from_trusted_cert(&root).map_err(pki_error)?;
        if anchor.subject.is_empty() {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(RootError::EmptySubject)),
            )));
        }
        let root_subject = vec![DistinguishedName::in_sequence(&anchor.subject)];
        Ok(Self {
            root,
            root_subject,
            domain: domain.to_owned(),
            revoked,
            issued: IssuedSet::default(),
            expected_org: None,
            any_server_name: false,
            algs: provider.signature_verification_algorithms,
        })
    }

    /// Also refuse gateway leaves that `issued` says were never published (off while its grace
    /// period is zero).
    pub fn with_issued(mut self, issued: IssuedSet) -> Self {
        self.issued = issued;
        self
    }

    /// As a dialer, also require the server to belong to `org`.
    pub fn expecting_org(mut self, org: &str) -> Self {
        self.expected_org = Some(org.to_owned());
        self
    }

    /// As a dialer, accept a server whatever name was dialled, as long as it proves a
    /// gateway identity of the consortium: for a caller that learns who answers from the
    /// certificate (`fedgw ping HOST:PORT` prints it) rather than expecting a gateway.
    pub fn any_server_name(mut self) -> Self {
        self.any_server_name = true;
        self
    }

    /// Validates a presented chain for `usage` and returns the peer's identity. The leaf must
    /// carry the fedgw-gateway extended key usage ([`PeerRejection::NotGateway`]).
    pub fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<PeerIdentity, rustls::Error> {
        let anchor = webpki::anchor_from_trusted_cert(&self.root).map_err(pki_error)?;
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            self.algs.all,
            &[anchor],
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
        let id =
            identity::peer_identity(end_entity, &self.domain).map_err(|e| rejection(e.into()))?;
        if !crate::pki::is_gateway_leaf(end_entity) {
            return Err(rejection(PeerRejection::NotGateway));
        }
        if self.revoked.contains(&id.org) {
            // rustls's own kind, so the handshake sends the `certificate_revoked` alert and the
            // revoked gateway can tell its operator why every peer hangs up on it
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        self.issued
            .check(end_entity, &id.org, now.as_secs())
            .map_err(rejection)?;
        if let Some(expected) = &self.expected_org
            && *expected != id.org
        {
            return Err(rejection(PeerRejection::WrongOrg {
                expected: expected.clone(),
                actual: id.org,
            }));
        }
        Ok(id)
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_subject
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify_chain(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ServerCertVerifier for PeerVerifier {
    /// Verifies the chain and identity. When `server_name` is a DNS name it must also be in the
    /// certificate (gateways dial each other as `gw-<site>.<org>.<domain>`, whatever address
    /// they connect to), unless built with [`PeerVerifier::any_server_name`]; when it is an IP
    /// address the org check stands in.
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify_chain(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        if let ServerName::DnsName(_) = server_name
            && !self.any_server_name
        {
            webpki::EndEntityCert::try_from(end_entity)
                .map_err(pki_error)?
                .verify_is_valid_for_subject_name(server_name)
                .map_err(pki_error)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The joiner's server verifier: the server must present a chain whose last certificate's
/// public key matches the token's pin, and whose leaf chains to it for serverAuth.
///
/// The pinned root certificate, once seen, is kept for the caller ([`Self::root`]).
#[derive(Debug)]
pub struct PinnedRootVerifier {
    pin: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
    seen_root: Mutex<Option<CertificateDer<'static>>>,
}

impl PinnedRootVerifier {
    /// A verifier for the root whose SubjectPublicKeyInfo hashes (SHA-256) to `pin`.
    pub fn new(pin: [u8; 32], provider: &CryptoProvider) -> Self {
        Self {
            pin,
            algs: provider.signature_verification_algorithms,
            seen_root: Mutex::new(None),
        }
    }

    /// The root certificate the server presented, if a handshake verified against the pin.
    pub fn root(&self) -> Option<CertificateDer<'static>> {
        self.seen_root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ServerCertVerifier for PinnedRootVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let root = intermediates
            .iter()
            .find(|c| crate::pki::spki_sha256(c).is_ok_and(|h| h == self.pin))
            .ok_or_else(|| rejection(PeerRejection::PinMismatch))?;
        let anchor = webpki::anchor_from_trusted_cert(root).map_err(pki_error)?;
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            self.algs.all,
            &[anchor],
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|_| rejection(PeerRejection::PinMismatch))?;
        *self.seen_root.lock().unwrap_or_else(|e| e.into_inner()) = Some(root.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Returns the [`PeerRejection`] behind a handshake error, if the refusal was ours.
pub fn peer_rejection(err: &rustls::Error) -> Option<&PeerRejection> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<PeerRejection>()
        }
        _ => None,
    }
}
