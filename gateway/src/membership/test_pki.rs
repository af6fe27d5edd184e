//! A consortium PKI generated at test time for record tests: a root, org CAs, signers, and a
//! foreign root to prove rejection.

use std::time::SystemTime;

use fedgw_certs::CertificateAuthority;
use fedgw_certs::envelope::{EnvelopeSigner, SignerVerifier};
use fedgw_certs::pki::{generate_key, org_ca_csr};
use fedgw_proto::v1 as pb;

use super::record::{self, Verified};

pub const DOMAIN: &str = "acme.test";

pub struct Pki {
    pub root: CertificateAuthority,
    pub root_signer: EnvelopeSigner,
    pub orgs: Vec<(String, CertificateAuthority, EnvelopeSigner)>,
}

impl Pki {
    pub fn new(orgs: &[&str]) -> Self {
        let now = SystemTime::now();
        let root = CertificateAuthority::new_root("acme", DOMAIN, now).expect("root");
        let root_signer = root.envelope_signer().expect("root signer");
        let orgs = orgs
            .iter()
            .map(|o| {
                let key = generate_key().expect("key");
                let csr = org_ca_csr(&key, o).expect("csr");
                let cert = root
                    .sign_org_ca(&csr, "acme", o, DOMAIN, now)
                    .expect("org ca");
                let ca = CertificateAuthority::from_parts(cert, &key.serialize_pem()).expect("ca");
                let signer = ca.envelope_signer().expect("signer");
                ((*o).to_owned(), ca, signer)
            })
            .collect();
        Self {
            root,
            root_signer,
            orgs,
        }
    }

    pub fn signer(&self, org: &str) -> &EnvelopeSigner {
        &self
            .orgs
            .iter()
            .find(|(o, _, _)| o == org)
            .expect("known org")
            .2
    }

    pub fn ca(&self, org: &str) -> &CertificateAuthority {
        &self
            .orgs
            .iter()
            .find(|(o, _, _)| o == org)
            .expect("known org")
            .1
    }

    pub fn lookup(&self) -> (SignerVerifier, SystemTime) {
        (
            SignerVerifier::new(self.root.cert().to_vec(), DOMAIN).expect("verifier"),
            SystemTime::now(),
        )
    }

    pub fn member(&self, org: &str, seq: u64) -> Vec<u8> {
        record::seal(
            &self.root_signer,
            org,
            "",
            seq,
            pb::record_body::Body::Member(pb::MemberRecord {
                org_ca_der: self.ca(org).cert().to_vec(),
                fabric_msp_id: String::new(),
                admitted_unix: 0,
            }),
        )
        .expect("seal")
    }

    pub fn node(&self, signer_org: &str, org: &str, name: &str, seq: u64, enode: u8) -> Vec<u8> {
        record::seal(
            self.signer(signer_org),
            org,
            name,
            seq,
            pb::record_body::Body::Node(node_record(enode)),
        )
        .expect("seal")
    }

    pub fn verify(&self, bytes: &[u8]) -> Result<Verified, record::Reject> {
        record::verify(bytes, &self.lookup(), DOMAIN)
    }
}

pub fn node_record(enode: u8) -> pb::NodeRecord {
    pb::NodeRecord {
        client: pb::ClientKind::Goquorum.into(),
        enode_id: vec![enode; 64],
        p2p_port: 30303,
        raft_port: 50400,
        raft_id: 1,
        tessera_keys: vec![],
        tessera_url: "http://node1:9000".into(),
        roles: vec![],
        site: "dc1".into(),
        allowed_orgs: vec![],
        ..Default::default()
    }
}

/// A membership for `org/dc1` on a store in `dir` (which the caller keeps), with `cfg` applied
/// to the settings: heartbeat 1 s, backoff 1 s to 8 s, sessions of at most an hour.
pub fn membership(
    pki: &Pki,
    org: &str,
    dir: &std::path::Path,
    cfg: impl FnOnce(&mut super::MembershipConfig),
) -> super::Membership {
    use std::time::Duration;

    let mut config = super::MembershipConfig {
        domain: DOMAIN.into(),
        me: super::GatewayId::new(org, "dc1"),
        replica_index: 0,
        outbound_only: false,
        heartbeat: Duration::from_secs(1),
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(8),
        deny: Default::default(),
        bootstrap: vec![],
        max_session_age: Duration::from_secs(3600),
    };
    cfg(&mut config);
    let store = crate::store::Store::open(&dir.join(format!("{org}.redb"))).expect("store");
    let keys = super::Keys {
        root_cert: pki.root.cert().to_vec(),
        org_signer: pki.ca(org).envelope_signer().expect("org signer"),
        root_signer: None,
    };
    super::Membership::open(
        config,
        std::sync::Arc::new(store),
        keys,
        crate::metrics::Metrics::new(),
        tokio_util::task::TaskTracker::new(),
        tokio_util::sync::CancellationToken::new(),
    )
    .expect("membership")
}
