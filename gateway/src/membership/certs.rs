//! Certificate transparency: every certificate an org CA issues (gateway leaves at start and on
//! renewal, node certificates from `fedgw cert issue`) is published as a `cert` record of that
//! org ([`fedgw_proto::v1::CertRecord`], key `cert/<org>/<serial hex>`). With
//! `[federation] require_issued_certs_after_s` set, a gateway refuses a peer gateway leaf whose
//! record it does not hold once the leaf is older than that ([`fedgw_certs::IssuedSet`]).

use std::collections::BTreeSet;

use fedgw_proto::v1 as pb;

use super::{Membership, PublishError, SignAs};

/// Why a certificate could not be described as a cert record.
#[derive(Debug, thiserror::Error)]
pub enum CertRecordError {
    /// The DER does not parse as an X.509 certificate.
    #[error("the certificate does not parse as X.509")]
    Parse,
    /// Publishing the record failed.
    #[error("publishing the cert record failed")]
    Publish(#[source] PublishError),
    /// Signing the record (offline) failed.
    #[error("signing the cert record failed")]
    Sign(#[source] fedgw_certs::envelope::EnvelopeError),
    /// The record (offline) does not verify: the certificate is not this org's.
    #[error("the cert record does not verify: {0}")]
    Refused(#[source] super::record::Reject),
    /// Storing the record (offline) failed.
    #[error("storing the cert record failed")]
    Store(#[source] crate::store::StoreError),
}

/// Publishes the cert record of `der` while the gateway is stopped: signed with the org CA
/// `org_ca`, checked like any received record, and written with its audit entry into `store`;
/// the gateway loads it at its next start and its peers fetch it by digest. Returns the serial.
pub fn publish_offline(
    store: &crate::store::Store,
    org_ca: &fedgw_certs::CertificateAuthority,
    root_der: &[u8],
    domain: &str,
    org: &str,
    der: &[u8],
) -> Result<String, CertRecordError> {
    let record = cert_record(der)?;
    let serial = record.serial.clone();
    let signer = org_ca.envelope_signer().map_err(CertRecordError::Sign)?;
    let now = std::time::SystemTime::now();
    let seq = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .max(1);
    let bytes = super::record::seal(
        &signer,
        org,
        &serial,
        seq,
        pb::record_body::Body::Cert(record),
    )
    .map_err(CertRecordError::Sign)?;
    let verifier = fedgw_certs::envelope::SignerVerifier::new(root_der.to_vec(), domain)
        .map_err(CertRecordError::Sign)?;
    let verified = super::record::verify(&bytes, &(verifier, now), domain)
        .map_err(CertRecordError::Refused)?;
    let audit = super::record::audit_event(&verified);
    store
        .put_records(
            &[(verified.key.to_string(), verified.bytes.clone())],
            &[audit],
        )
        .map_err(CertRecordError::Store)?;
    Ok(serial)
}

/// The cert record of a DER certificate: serial (lowercase hex, leading zeros dropped, `0` for
/// zero), subject common name, DNS and URI SANs, notAfter and the SPKI's SHA-256.
pub fn cert_record(der: &[u8]) -> Result<pb::CertRecord, CertRecordError> {
    use sha2::Digest;
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| CertRecordError::Parse)?;
    let serial = cert
        .tbs_certificate
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let serial = match serial.trim_start_matches('0') {
        "" => "0".to_owned(),
        s => s.to_owned(),
    };
    let subject = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push((*d).to_owned()),
                GeneralName::URI(u) => sans.push((*u).to_owned()),
                _ => {}
            }
        }
    }
    sans.truncate(crate::membership::record::MAX_CERT_SANS);
    Ok(pb::CertRecord {
        serial,
        subject,
        sans,
        not_after_unix: cert.validity().not_after.timestamp(),
        spki_sha256: sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw).to_vec(),
    })
}

/// The (org, SPKI SHA-256) pairs the view's cert records name, for the verifiers'
/// [`fedgw_certs::IssuedSet`].
pub fn issued_spkis(certs: &[(String, pb::CertRecord)]) -> BTreeSet<(String, [u8; 32])> {
    certs
        .iter()
        .filter_map(|(o, c)| {
            let spki = <[u8; 32]>::try_from(c.spki_sha256.as_slice()).ok()?;
            Some((o.clone(), spki))
        })
        .collect()
}

impl Membership {
    /// Publishes the cert record of `der`, a certificate this org's CA issued, unless the view
    /// already holds one for its serial. Returns whether it published.
    pub async fn publish_cert(&self, der: &[u8]) -> Result<bool, CertRecordError> {
        let record = cert_record(der)?;
        let org = self.me().org.clone();
        let held = self.read(|v| {
            v.certs()
                .iter()
                .any(|(o, c)| *o == org && c.serial == record.serial)
        });
        if held {
            return Ok(false);
        }
        let serial = record.serial.clone();
        self.publish(
            &org,
            &serial,
            pb::record_body::Body::Cert(record),
            SignAs::Org,
        )
        .await
        .map_err(CertRecordError::Publish)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::test_pki::{DOMAIN, Pki};

    fn node_cert(pki: &Pki, org: &str, name: &str) -> Vec<u8> {
        let names = vec![format!("{name}.{org}.{DOMAIN}")];
        let leaf = pki
            .ca(org)
            .issue_node_leaf(
                &names,
                org,
                DOMAIN,
                std::time::Duration::from_secs(3600),
                std::time::SystemTime::now(),
            )
            .expect("leaf");
        leaf.chain[0].to_vec()
    }

    #[test]
    fn a_node_certificate_becomes_a_record_that_verifies() {
        let pki = Pki::new(&["org1", "org2"]);
        let der = node_cert(&pki, "org1", "node1");
        let rec = cert_record(&der).expect("record");
        assert_eq!(rec.sans, vec![format!("node1.org1.{DOMAIN}")]);
        assert!(!rec.serial.is_empty() && !rec.serial.starts_with('0'));
        assert_eq!(
            rec.spki_sha256,
            fedgw_certs::pki::spki_sha256(&der).expect("spki").to_vec()
        );
        let seal = |signer: &str, rec: pb::CertRecord| {
            crate::membership::record::seal(
                pki.signer(signer),
                "org1",
                &rec.serial.clone(),
                1,
                pb::record_body::Body::Cert(rec),
            )
            .expect("seal")
        };
        let v = pki.verify(&seal("org1", rec.clone())).expect("verifies");
        assert_eq!(v.key.to_string(), format!("cert/org1/{}", rec.serial));
        // another org cannot publish org1's certificates
        assert!(pki.verify(&seal("org2", rec.clone())).is_err());
        // nor can org1 claim a name outside its subtree
        let mut outside = rec;
        outside.sans = vec![format!("node1.org2.{DOMAIN}")];
        assert!(matches!(
            pki.verify(&seal("org1", outside)),
            Err(crate::membership::record::Reject::Invalid(_))
        ));
        assert!(matches!(cert_record(b"junk"), Err(CertRecordError::Parse)));
    }
}
