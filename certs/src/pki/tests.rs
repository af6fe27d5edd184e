use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use rustls::{ClientConnection, ServerConnection};
use rustls_pki_types::{ServerName, UnixTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::*;
use crate::tls;
use crate::verify::{
    PeerRejection, PeerVerifier, PinnedRootVerifier, RevocationSet, peer_rejection,
};

const DOMAIN: &str = "acme.example";

struct Org {
    ca: CertificateAuthority,
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn root() -> CertificateAuthority {
    CertificateAuthority::new_root("acme", DOMAIN, now()).expect("root")
}

fn admit(root: &CertificateAuthority, org: &str) -> Org {
    let key = generate_key().expect("key");
    let csr = org_ca_csr(&key, org).expect("csr");
    let cert = root
        .sign_org_ca(&csr, "acme", org, DOMAIN, now())
        .expect("org ca");
    Org {
        ca: CertificateAuthority::from_parts(cert, &key.serialize_pem()).expect("ca"),
    }
}

fn gateway(org: &Org, site: &str, name: &str) -> IssuedLeaf {
    org.ca
        .issue_gateway_leaf(site, name, DOMAIN, DEFAULT_LEAF_LIFETIME, now())
        .expect("leaf")
}

fn verifier(root: &CertificateAuthority, revoked: &RevocationSet) -> PeerVerifier {
    PeerVerifier::new(
        root.cert().clone(),
        DOMAIN,
        revoked.clone(),
        &tls::provider(),
    )
    .expect("verifier")
}

fn verify_client(
    v: &PeerVerifier,
    leaf: &IssuedLeaf,
) -> Result<crate::PeerIdentity, rustls::Error> {
    v.verify_chain(
        &leaf.chain[0],
        &leaf.chain[1..],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
    )
}

fn dns_constraints(der: &[u8]) -> (Vec<String>, Option<u32>) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse");
    let mut permitted = vec![];
    let mut pathlen = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::NameConstraints(nc) => {
                assert!(nc.excluded_subtrees.is_none());
                for sub in nc.permitted_subtrees.iter().flatten() {
                    match &sub.base {
                        GeneralName::DNSName(d) => permitted.push(d.to_string()),
                        other => permitted.push(format!("{other:?}")),
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => {
                assert!(bc.ca);
                pathlen = bc.path_len_constraint;
            }
            _ => {}
        }
    }
    (permitted, pathlen)
}

#[test]
fn org_ca_is_constrained_to_its_subtree() {
    let root = root();
    let org2 = admit(&root, "org2");
    let (permitted, pathlen) = dns_constraints(org2.ca.cert());
    assert_eq!(permitted, vec!["org2.acme.example".to_owned()]);
    assert_eq!(pathlen, Some(0));
}

#[test]
fn csr_asking_for_extra_names_is_ignored() {
    let root = root();
    let key = generate_key().expect("key");
    let mut params = CertificateParams::new(vec![
        "org3.acme.example".to_owned(),
        "acme.example".to_owned(),
    ])
    .expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "acme root CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).expect("csr");
    let cert = root
        .sign_org_ca(csr.der(), "acme", "org2", DOMAIN, now())
        .expect("signed");
    let (permitted, pathlen) = dns_constraints(&cert);
    assert_eq!(permitted, vec!["org2.acme.example".to_owned()]);
    assert_eq!(pathlen, Some(0));
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert).expect("parse");
    assert!(parsed.subject_alternative_name().expect("ok").is_none());
    assert_eq!(
        parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok()),
        Some("org2 CA")
    );
}

#[test]
fn csr_with_bad_signature_or_key_is_refused() {
    let root = root();
    let key = generate_key().expect("key");
    let mut csr = org_ca_csr(&key, "org2").expect("csr");
    let last = csr.len() - 3;
    csr[last] ^= 0x55;
    assert!(matches!(
        root.sign_org_ca(&csr, "acme", "org2", DOMAIN, now()),
        Err(PkiError::Csr(_))
    ));
    assert!(matches!(
        root.sign_org_ca(b"garbage", "acme", "org2", DOMAIN, now()),
        Err(PkiError::Csr(_))
    ));
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
    let csr = org_ca_csr(&ed, "org2").expect("csr");
    assert!(matches!(
        root.sign_org_ca(&csr, "acme", "org2", DOMAIN, now()),
        Err(PkiError::CsrKeyAlgorithm)
    ));
    assert!(matches!(
        root.sign_org_ca(&csr, "acme", "Org2", DOMAIN, now()),
        Err(PkiError::Name(_))
    ));
}

#[test]
fn gateway_leaf_verifies_and_names_its_org() {
    let root = root();
    let org2 = admit(&root, "org2");
    let leaf = gateway(&org2, "dc1", "org2");
    let id = verify_client(&verifier(&root, &RevocationSet::default()), &leaf).expect("valid");
    assert_eq!(id.org, "org2");
    assert_eq!(id.dns_name, "gw-dc1.org2.acme.example");
    assert_eq!(
        id.spiffe_id.as_deref(),
        Some("spiffe://acme.example/org/org2/gw/dc1")
    );
}

#[test]
fn replica_leaf_shares_the_site_name_and_carries_its_replica() {
    let root = root();
    let org2 = admit(&root, "org2");
    let leaf = org2
        .ca
        .issue_replica_leaf("dc1", "r2", "org2", DOMAIN, DEFAULT_LEAF_LIFETIME, now())
        .expect("issue");
    let id = verify_client(&verifier(&root, &RevocationSet::default()), &leaf).expect("valid");
    assert_eq!(id.dns_name, "gw-dc1.org2.acme.example");
    assert_eq!(
        crate::ids::GatewayId::from_identity(&id, DOMAIN),
        Some(crate::ids::GatewayId::replica("org2", "dc1", "r2"))
    );
    assert!(matches!(
        org2.ca
            .issue_replica_leaf("dc1", "R2", "org2", DOMAIN, DEFAULT_LEAF_LIFETIME, now()),
        Err(PkiError::Name(_))
    ));
}

#[test]
fn leaf_outside_the_org_subtree_is_a_name_constraint_violation() {
    let root = root();
    let org1 = admit(&root, "org1");
    // org1's CA key signs a certificate claiming a name in org2's subtree
    let forged = org1
        .ca
        .issue_leaf(
            "x.org2.acme.example",
            vec![SanType::DnsName(
                "x.org2.acme.example".try_into().expect("ia5"),
            )],
            LeafKind::Node,
            DEFAULT_LEAF_LIFETIME,
            now(),
        )
        .expect("rcgen signs anything");
    let err = verify_client(&verifier(&root, &RevocationSet::default()), &forged)
        .expect_err("must be refused");
    assert!(
        format!("{err:?}").contains("NameConstraintViolation"),
        "{err:?}"
    );
    // and the public issuer refuses to make it in the first place
    assert!(matches!(
        org1.ca.issue_node_leaf(
            &["x.org2.acme.example".into()],
            "org1",
            DOMAIN,
            DEFAULT_LEAF_LIFETIME,
            now()
        ),
        Err(PkiError::OutsideSubtree { .. })
    ));
}

#[test]
fn certificate_from_a_foreign_ca_is_refused() {
    let ours = root();
    let v = verifier(&ours, &RevocationSet::default());
    // a foreign consortium: its issuer name is unknown here
    let evil = CertificateAuthority::new_root("evil", DOMAIN, now()).expect("foreign root");
    let leaf = gateway(&admit(&evil, "org2"), "dc1", "org2");
    assert_eq!(
        verify_client(&v, &leaf).expect_err("foreign"),
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    );
    // an impostor root with our exact subject name: the chain's signature does not verify
    let impostor = CertificateAuthority::new_root("acme", DOMAIN, now()).expect("impostor");
    let leaf = gateway(&admit(&impostor, "org2"), "dc1", "org2");
    assert_eq!(
        verify_client(&v, &leaf).expect_err("impostor"),
        rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
    );
}

#[test]
fn revoked_org_is_refused_once_the_set_is_replaced() {
    let root = root();
    let org2 = admit(&root, "org2");
    let leaf = gateway(&org2, "dc1", "org2");
    let revoked = RevocationSet::default();
    let v = verifier(&root, &revoked);
    assert!(verify_client(&v, &leaf).is_ok());
    revoked.replace(["org2".to_owned()].into());
    let err = verify_client(&v, &leaf).expect_err("revoked");
    // rustls's kind, so the revoked gateway receives the `certificate_revoked` alert
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
    );
    revoked.replace(Default::default());
    assert!(verify_client(&v, &leaf).is_ok());
}

#[test]
fn spiffe_id_naming_another_org_is_refused() {
    let root = root();
    let org2 = admit(&root, "org2");
    let leaf = org2
        .ca
        .issue_leaf(
            "gw-a.org2.acme.example",
            vec![
                SanType::DnsName("gw-a.org2.acme.example".try_into().expect("ia5")),
                SanType::URI(
                    "spiffe://acme.example/org/org3/gw/a"
                        .try_into()
                        .expect("ia5"),
                ),
            ],
            LeafKind::Gateway,
            DEFAULT_LEAF_LIFETIME,
            now(),
        )
        .expect("leaf");
    let err =
        verify_client(&verifier(&root, &RevocationSet::default()), &leaf).expect_err("mismatch");
    assert!(
        matches!(peer_rejection(&err), Some(PeerRejection::Identity(_))),
        "{err:?}"
    );
}

#[test]
fn expired_leaf_is_refused() {
    let root = root();
    let org2 = admit(&root, "org2");
    let past = now() - Duration::from_secs(3600);
    let leaf = org2
        .ca
        .issue_gateway_leaf("dc1", "org2", DOMAIN, Duration::from_secs(60), past)
        .expect("leaf");
    let err =
        verify_client(&verifier(&root, &RevocationSet::default()), &leaf).expect_err("expired");
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
    );
}

/// Drives a client and server connection in memory until both finish the handshake or one fails.
fn handshake(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    for _ in 0..20 {
        buf.clear();
        client.write_tls(&mut buf).expect("vec write");
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).expect("vec read");
        }
        server.process_new_packets()?;
        buf.clear();
        server.write_tls(&mut buf).expect("vec write");
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).expect("vec read");
        }
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn identity(leaf: &IssuedLeaf) -> tls::ReloadableIdentity {
    tls::ReloadableIdentity::new(leaf.chain.clone(), &leaf.key, &tls::provider()).expect("identity")
}

fn federation_pair(
    root: &CertificateAuthority,
    revoked: &RevocationSet,
    client_leaf: &IssuedLeaf,
    server_leaf: &IssuedLeaf,
) -> (ClientConnection, ServerConnection) {
    federation_pair_with(root, revoked, client_leaf, server_leaf, tls::provider())
}

/// [`federation_pair`] with the client on its own crypto provider.
fn federation_pair_with(
    root: &CertificateAuthority,
    revoked: &RevocationSet,
    client_leaf: &IssuedLeaf,
    server_leaf: &IssuedLeaf,
    client_provider: Arc<rustls::crypto::CryptoProvider>,
) -> (ClientConnection, ServerConnection) {
    let v = Arc::new(verifier(root, revoked));
    let sc = tls::federation_server_config(&identity(server_leaf), v.clone(), tls::provider())
        .expect("sc");
    let cc = tls::federation_client_config(&identity(client_leaf), v, client_provider).expect("cc");
    let name = ServerName::try_from("gw-dc1.org1.acme.example").expect("name");
    (
        ClientConnection::new(Arc::new(cc), name).expect("client"),
        ServerConnection::new(Arc::new(sc)).expect("server"),
    )
}

#[test]
fn mutual_tls_handshake_sees_both_orgs() {
    let root = root();
    let (org1, org2) = (admit(&root, "org1"), admit(&root, "org2"));
    let (gw1, gw2) = (gateway(&org1, "dc1", "org1"), gateway(&org2, "dc1", "org2"));
    let (mut client, mut server) = federation_pair(&root, &RevocationSet::default(), &gw2, &gw1);
    handshake(&mut client, &mut server).expect("mTLS handshake");
    let client_seen = server.peer_certificates().expect("client cert");
    let server_seen = client.peer_certificates().expect("server cert");
    assert_eq!(
        crate::peer_identity(&client_seen[0], DOMAIN)
            .expect("id")
            .org,
        "org2"
    );
    assert_eq!(
        crate::peer_identity(&server_seen[0], DOMAIN)
            .expect("id")
            .org,
        "org1"
    );
    assert_eq!(server.alpn_protocol(), Some(tls::ALPN_H2));
}

#[test]
fn gateways_agree_on_aes_128_gcm_and_serve_peers_that_offer_only_aes_256() {
    let root = root();
    let (org1, org2) = (admit(&root, "org1"), admit(&root, "org2"));
    let (gw1, gw2) = (gateway(&org1, "dc1", "org1"), gateway(&org2, "dc1", "org2"));
    let (mut client, mut server) = federation_pair(&root, &RevocationSet::default(), &gw2, &gw1);
    handshake(&mut client, &mut server).expect("mTLS handshake");
    let suite = |c: &ClientConnection| c.negotiated_cipher_suite().map(|s| s.suite());
    assert_eq!(
        suite(&client),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );

    // a client whose provider offers AES-256-GCM alone
    let mut only_256 = (*tls::provider()).clone();
    only_256.cipher_suites =
        vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384];
    let (mut client, mut server) = federation_pair_with(
        &root,
        &RevocationSet::default(),
        &gw2,
        &gw1,
        Arc::new(only_256),
    );
    handshake(&mut client, &mut server).expect("AES-256-GCM handshake");
    assert_eq!(
        suite(&client),
        Some(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384)
    );
}

#[test]
fn revoked_client_fails_the_handshake() {
    let root = root();
    let (org1, org2) = (admit(&root, "org1"), admit(&root, "org2"));
    let (gw1, gw2) = (gateway(&org1, "dc1", "org1"), gateway(&org2, "dc1", "org2"));
    let revoked = RevocationSet::default();
    revoked.replace(["org2".to_owned()].into());
    let (mut client, mut server) = federation_pair(&root, &revoked, &gw2, &gw1);
    assert!(handshake(&mut client, &mut server).is_err());
}

#[test]
fn client_without_certificate_fails_on_the_federation_config() {
    let root = root();
    let org1 = admit(&root, "org1");
    let gw1 = gateway(&org1, "dc1", "org1");
    let p = tls::provider();
    let v = Arc::new(verifier(&root, &RevocationSet::default()));
    let sc = tls::federation_server_config(&identity(&gw1), v.clone(), p.clone()).expect("sc");
    let mut cc = rustls::ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(v)
        .with_no_client_auth();
    cc.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
    let name = ServerName::try_from("gw-dc1.org1.acme.example").expect("name");
    let mut client = ClientConnection::new(Arc::new(cc), name).expect("client");
    let mut server = ServerConnection::new(Arc::new(sc)).expect("server");
    let err = handshake(&mut client, &mut server).expect_err("no client cert");
    assert_eq!(err, rustls::Error::NoCertificatesPresented);
}

fn join_pair(
    root: &CertificateAuthority,
    server_leaf: &IssuedLeaf,
    pin: [u8; 32],
) -> (ClientConnection, ServerConnection, Arc<PinnedRootVerifier>) {
    let p = tls::provider();
    let sc = tls::join_server_config(&identity(server_leaf), root.cert().clone(), p.clone())
        .expect("sc");
    let pv = Arc::new(PinnedRootVerifier::new(pin, &p));
    let cc = tls::join_client_config(pv.clone(), p).expect("cc");
    let name = ServerName::try_from("127.0.0.1").expect("ip");
    (
        ClientConnection::new(Arc::new(cc), name).expect("client"),
        ServerConnection::new(Arc::new(sc)).expect("server"),
        pv,
    )
}

#[test]
fn joiner_accepts_the_pinned_root_and_learns_it() {
    let root = root();
    let org1 = admit(&root, "org1");
    let gw1 = gateway(&org1, "dc1", "org1");
    let pin = spki_sha256(root.cert()).expect("pin");
    let (mut c, mut s, pv) = join_pair(&root, &gw1, pin);
    handshake(&mut c, &mut s).expect("pinned handshake");
    assert_eq!(pv.root().as_ref(), Some(root.cert()));
}

#[test]
fn joiner_refuses_a_wrong_pin_before_sending_data() {
    use std::io::Write;
    let root = root();
    let org1 = admit(&root, "org1");
    let gw1 = gateway(&org1, "dc1", "org1");
    let mut pin = spki_sha256(root.cert()).expect("pin");
    pin[0] ^= 1;
    let (mut c, mut s, pv) = join_pair(&root, &gw1, pin);
    // application data queued before the handshake must never reach the server
    c.writer().write_all(b"secret request").expect("buffered");
    let err = handshake(&mut c, &mut s).expect_err("wrong pin");
    assert!(
        matches!(peer_rejection(&err), Some(PeerRejection::PinMismatch)),
        "{err:?}"
    );
    assert!(pv.root().is_none());
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s.reader(), &mut got);
    assert!(got.is_empty());
}

#[test]
fn openssl_shows_the_name_constraint_and_pathlen() {
    let root = root();
    let org2 = admit(&root, "org2");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("org2-ca.pem");
    std::fs::write(&path, certs_to_pem(&[org2.ca.cert().clone()])).expect("write");
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&path)
        .output()
        .expect("openssl must be installed (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("X509v3 Name Constraints: critical"), "{text}");
    assert!(
        text.contains("Permitted:") && text.contains("DNS:org2.acme.example"),
        "{text}"
    );
    assert!(!text.contains("Excluded:"), "{text}");
}

#[test]
fn pem_round_trip() {
    let root = root();
    let org2 = admit(&root, "org2");
    let leaf = gateway(&org2, "dc1", "org2");
    let pem = certs_to_pem(&leaf.chain);
    assert_eq!(certs_from_pem(&pem).expect("parse"), leaf.chain);
    assert!(certs_from_pem("not pem").is_err());
    assert!(key_from_pem("garbage").is_err());
}

#[test]
fn only_gateway_leaves_carry_the_gateway_key_usage() {
    let root = root();
    let org2 = admit(&root, "org2");
    let gw = gateway(&org2, "dc1", "org2");
    assert!(is_gateway_leaf(&gw.chain[0]));
    let node = org2
        .ca
        .issue_node_leaf(
            &["tm1.org2.acme.example".into()],
            "org2",
            DOMAIN,
            DEFAULT_LEAF_LIFETIME,
            now(),
        )
        .expect("node leaf");
    assert!(!is_gateway_leaf(&node.chain[0]));
    assert!(!is_gateway_leaf(b"not a certificate"));
    // webpki still sees serverAuth and clientAuth on the gateway leaf
    let v = verifier(&root, &RevocationSet::default());
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        v.verify_chain(&gw.chain[0], &gw.chain[1..], UnixTime::now(), usage)
            .expect("gateway leaf");
    }
    // and openssl reads the OID where RFC 5280 puts it
    let text = openssl_text(&gw.chain[0]);
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains(GATEWAY_EKU_OID_TEXT), "{text}");
}

#[test]
fn a_node_leaf_is_refused_as_a_gateway_whatever_its_name() {
    let root = root();
    let org2 = admit(&root, "org2");
    // what a CA key could sign: a node leaf named like a gateway (the public issuer refuses)
    let impostor = org2
        .ca
        .issue_leaf(
            "gw-dc5.org2.acme.example",
            vec![SanType::DnsName(
                "gw-dc5.org2.acme.example".try_into().expect("ia5"),
            )],
            LeafKind::Node,
            DEFAULT_LEAF_LIFETIME,
            now(),
        )
        .expect("leaf");
    let v = verifier(&root, &RevocationSet::default());
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        let err = v
            .verify_chain(
                &impostor.chain[0],
                &impostor.chain[1..],
                UnixTime::now(),
                usage,
            )
            .expect_err("node leaf");
        assert!(
            matches!(peer_rejection(&err), Some(PeerRejection::NotGateway)),
            "{err:?}"
        );
    }
    // and over a real handshake, as client and as server
    let org1_gw = gateway(&admit(&root, "org1"), "dc1", "org1");
    let none = RevocationSet::default();
    for (client_leaf, server_leaf) in [(&impostor, &org1_gw), (&org1_gw, &impostor)] {
        let (mut client, mut server) = federation_pair(&root, &none, client_leaf, server_leaf);
        let err = handshake(&mut client, &mut server).expect_err("node leaf");
        assert!(
            matches!(peer_rejection(&err), Some(PeerRejection::NotGateway)),
            "{err:?}"
        );
    }
    let (mut client, mut server) = federation_pair(&root, &none, &org1_gw, &org1_gw);
    handshake(&mut client, &mut server).expect("gateway leaves");
}

fn openssl_text(der: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("leaf.pem");
    std::fs::write(&path, certs_to_pem(&[der.to_vec().into()])).expect("write");
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&path)
        .output()
        .expect("openssl must be installed (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn node_leaves_never_take_gateway_names() {
    let root = root();
    let org2 = admit(&root, "org2");
    for name in ["gw-dc5.org2.acme.example", "gw-x.tm.org2.acme.example"] {
        let err = org2
            .ca
            .issue_node_leaf(
                &["tm1.org2.acme.example".into(), name.into()],
                "org2",
                DOMAIN,
                DEFAULT_LEAF_LIFETIME,
                now(),
            )
            .expect_err(name);
        assert!(
            matches!(&err, PkiError::ReservedName(n) if n == name),
            "{err:?}"
        );
    }
    // a "gw" inside a name is no gateway name
    org2.ca
        .issue_node_leaf(
            &[
                "tm-gw-1.org2.acme.example".into(),
                "gw.org2.acme.example".into(),
            ],
            "org2",
            DOMAIN,
            DEFAULT_LEAF_LIFETIME,
            now(),
        )
        .expect("not reserved");
}

#[test]
fn certificate_request_names_the_root_with_its_outer_sequence() {
    use rustls::server::danger::ClientCertVerifier;
    let root = root();
    let v = verifier(&root, &RevocationSet::default());
    let (_, parsed) = x509_parser::parse_x509_certificate(root.cert()).expect("root parses");
    let hints = v.root_hint_subjects();
    assert_eq!(hints.len(), 1);
    // RFC 8446 4.2.4: DistinguishedName is the DER of X.501 Name, a SEQUENCE (tag 0x30)
    assert_eq!(hints[0].as_ref(), parsed.subject().as_raw());
    assert_eq!(hints[0].as_ref()[0], 0x30);

    // a root with an empty subject is refused, not sent as an empty name
    let key = generate_key().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(1));
    let empty = params.self_signed(&key).expect("self-signed");
    let err = PeerVerifier::new(
        empty.der().clone(),
        DOMAIN,
        RevocationSet::default(),
        &tls::provider(),
    )
    .expect_err("empty subject");
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(
        other.0.downcast_ref::<crate::verify::RootError>(),
        Some(&crate::verify::RootError::EmptySubject)
    );
}
