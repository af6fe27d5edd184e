//! The join and federation endpoints of a gateway started in-process (`app::start`), exercised
//! over real loopback sockets with the library's own clients.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fedgw_certs::token::JoinToken;
use fedgw_certs::{CertificateAuthority, PeerVerifier, RevocationSet, pki, tls};
use fedgw_gateway::app::{self, Running};
use fedgw_gateway::config::Admission;
use fedgw_gateway::datadir::DataDir;
use fedgw_gateway::join::client::{self, JoinError, JoinParams, Joined};
use fedgw_gateway::join::server::{InviteSpec, create_invite};
use fedgw_gateway::provision::{self, InitOptions, NetworkOptions};
use fedgw_gateway::store::{self, Invite};
use fedgw_proto::v1::RefusalReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const DOMAIN: &str = "acme.test";
const TIMEOUT: Duration = Duration::from_secs(10);

fn network() -> NetworkOptions {
    NetworkOptions {
        fabric_msp_id: None,
        site: "dc1".into(),
        advertise: vec!["127.0.0.1:0".into()],
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        dns: "127.0.0.1:0".parse().expect("addr"),
        metrics: "127.0.0.1:0".parse().expect("addr"),
        leaf_lifetime: Duration::from_secs(3600),
        outbound_only: false,
        addresses: Default::default(),
        tunnel: Default::default(),
    }
}

struct Founder {
    _tmp: tempfile::TempDir,
    dir: DataDir,
    running: Running,
    shutdown: CancellationToken,
}

impl Founder {
    async fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path().join("org1"));
        provision::init(
            &dir,
            &InitOptions {
                consortium: "acme".into(),
                domain: DOMAIN.into(),
                org: "org1".into(),
                admission: Admission::Operator,
                consensus: Default::default(),
                genesis: Some(br#"{"config":{"chainId":10}}"#.to_vec()),
                network: network(),
            },
            SystemTime::now(),
        )
        .expect("init");
        let shutdown = CancellationToken::new();
        let running = app::start(dir.clone(), shutdown.clone())
            .await
            .expect("start");
        Self {
            _tmp: tmp,
            dir,
            running,
            shutdown,
        }
    }

    fn endpoint(&self) -> String {
        self.running.info.advertise[0].clone()
    }

    fn root_cert(&self) -> Vec<u8> {
        std::fs::read_to_string(self.dir.root_cert())
            .map(|pem| pki::certs_from_pem(&pem).expect("pem")[0].to_vec())
            .expect("root cert")
    }

    fn invite(&self, org: &str, uses: u32) -> JoinToken {
        let config = fedgw_gateway::config::Config::load(&self.dir.config()).expect("config");
        create_invite(
            &self.running.store,
            &config,
            &self.root_cert(),
            &self.endpoint(),
            &InviteSpec {
                org: org.into(),
                ttl: Duration::from_secs(600),
                uses,
            },
            SystemTime::now(),
        )
        .expect("invite")
        .0
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.running.wait())
            .await
            .expect("drains within the grace period");
    }
}

async fn join(token: &JoinToken, org: &str) -> Result<Joined, JoinError> {
    let key = pki::generate_key().expect("key");
    let csr = pki::org_ca_csr(&key, org).expect("csr");
    let params = JoinParams {
        fabric_msp_id: String::new(),
        token: token.clone(),
        org: org.into(),
        site: "dc1".into(),
        advertise: vec!["127.0.0.1:0".into()],
        timeout: TIMEOUT,
    };
    client::join(&params, &csr, &pki::spki_der(&key), &|_| {}).await
}

fn refusal(r: Result<Joined, JoinError>) -> RefusalReason {
    match r {
        Err(JoinError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn admitted_org_gets_a_constrained_ca_the_root_and_the_genesis() {
    let f = Founder::start().await;
    let joined = join(&f.invite("org2", 1), "org2").await.expect("admitted");
    assert_eq!(joined.root.as_ref(), f.root_cert().as_slice());
    assert_eq!(joined.admitted.genesis, br#"{"config":{"chainId":10}}"#);
    let consortium = joined.admitted.consortium.as_ref().expect("info");
    assert_eq!(
        (consortium.name.as_str(), consortium.domain.as_str()),
        ("acme", DOMAIN)
    );
    assert_eq!(joined.admitted.gateways[0].advertise, vec![f.endpoint()]);
    let members: Vec<_> = f
        .running
        .store
        .members()
        .expect("members")
        .into_iter()
        .map(|m| m.org)
        .collect();
    assert_eq!(members, ["org1", "org2"]);
    f.stop().await;
}

#[tokio::test]
async fn reused_unknown_wrong_org_and_bad_proof_tokens_are_refused() {
    let f = Founder::start().await;
    let token = f.invite("org2", 1);
    assert_eq!(refusal(join(&token, "org3").await), RefusalReason::WrongOrg);
    join(&token, "org2").await.expect("first use admitted");
    assert_eq!(
        refusal(join(&token, "org2").await),
        RefusalReason::TokenUsed
    );

    let unknown = JoinToken::generate(&f.endpoint(), token.root_pin).expect("token");
    assert_eq!(
        refusal(join(&unknown, "org3").await),
        RefusalReason::UnknownToken
    );

    // right id, wrong secret
    let good = f.invite("org4", 1);
    let other = JoinToken::generate(&f.endpoint(), token.root_pin).expect("token");
    let text = other.to_text().replacen(&other.id, &good.id, 1);
    let forged = JoinToken::parse(&text).expect("parses");
    assert_eq!(
        refusal(join(&forged, "org4").await),
        RefusalReason::BadProof
    );
    join(&good, "org4")
        .await
        .expect("the real holder still gets in");
    f.stop().await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    let f = Founder::start().await;
    let token = f.invite("org2", 1);
    let mut invite = f
        .running
        .store
        .invite(&token.id)
        .expect("read")
        .expect("stored");
    invite.expires_unix = store::unix(SystemTime::now()) - 1;
    f.running.store.put_invite(&token.id, &invite).expect("put");
    assert_eq!(
        refusal(join(&token, "org2").await),
        RefusalReason::TokenExpired
    );
    f.stop().await;
}

#[tokio::test]
async fn concurrent_joins_with_one_single_use_token_admit_exactly_one() {
    let f = Founder::start().await;
    let token = f.invite("org2", 1);
    // as many racers as the per-token burst allows, so none is turned away by the rate limit
    let burst = fedgw_gateway::join::limiter::BURST as usize;
    let attempts = (0..burst).map(|_| {
        let token = token.clone();
        tokio::spawn(async move { join(&token, "org2").await })
    });
    let mut admitted = 0;
    for a in attempts {
        match a.await.expect("task") {
            Ok(_) => admitted += 1,
            Err(JoinError::Refused { reason, .. }) => assert!(
                matches!(
                    reason,
                    RefusalReason::TokenUsed | RefusalReason::AlreadyMember
                ),
                "{reason:?}"
            ),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(admitted, 1);
    f.stop().await;
}

#[tokio::test]
async fn attempts_per_token_id_are_rate_limited() {
    let f = Founder::start().await;
    let good = f.invite("org2", 1);
    let other = JoinToken::generate(&f.endpoint(), good.root_pin).expect("token");
    let forged =
        JoinToken::parse(&other.to_text().replacen(&other.id, &good.id, 1)).expect("parses");
    for _ in 0..5 {
        assert_eq!(
            refusal(join(&forged, "org2").await),
            RefusalReason::BadProof
        );
    }
    assert_eq!(
        refusal(join(&forged, "org2").await),
        RefusalReason::RateLimited
    );
    // the limit is per id: the genuine holder is limited too until the bucket refills, but
    // another invite is unaffected
    let fresh = f.invite("org3", 1);
    join(&fresh, "org3")
        .await
        .expect("other ids are not limited");
    f.stop().await;
}

#[tokio::test]
async fn wrong_pin_fails_before_anything_is_sent() {
    let f = Founder::start().await;
    let token = f.invite("org2", 1);
    let mut text = token.to_text().to_string();
    let pin_start = text.len() - 43;
    let flipped = if &text[pin_start..pin_start + 1] == "A" {
        "B"
    } else {
        "A"
    };
    text.replace_range(pin_start..pin_start + 1, flipped);
    let wrong = JoinToken::parse(&text).expect("parses");
    match join(&wrong, "org2").await {
        Err(JoinError::PinMismatch(_)) => {}
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    assert_eq!(
        f.running.metrics.join_requests_total(),
        0,
        "no request reached the server"
    );
    // the invite is intact
    join(&token, "org2")
        .await
        .expect("admitted with the right pin");
    f.stop().await;
}

#[tokio::test]
async fn unreachable_inviter_is_its_own_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let token = JoinToken::generate(&addr.to_string(), [0; 32]).expect("token");
    match join(&token, "org2").await {
        Err(JoinError::Unreachable { .. }) => {}
        other => panic!("expected unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_on_the_gateway_port_is_survived() {
    let f = Founder::start().await;
    let addr = f.running.info.gateway;
    // raw garbage, a truncated ClientHello, and an abrupt close
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x40, 0x00, 0x01][..],
        &[0xff; 4096][..],
        &[][..],
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(junk).await;
        let _ = s.shutdown().await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut buf))
            .await
            .expect("server closes");
    }
    // a valid join TLS session that then speaks garbage instead of HTTP/2
    let provider = tls::provider();
    let pin = pki::spki_sha256(&f.root_cert()).expect("pin");
    let v = Arc::new(fedgw_certs::PinnedRootVerifier::new(pin, &provider));
    let cfg = Arc::new(tls::join_client_config(v, provider).expect("cfg"));
    let mut s = fedgw_gateway::net::dial_tls(&f.endpoint(), cfg, TIMEOUT)
        .await
        .expect("tls");
    let _ = s.write_all(&[0u8; 1024]).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut buf))
        .await
        .expect("server closes");
    // still serving
    join(&f.invite("org2", 1), "org2")
        .await
        .expect("still admits");
    f.stop().await;
}

/// Builds a gateway identity for `org` under `root` and a federation client config for it.
fn client_config(
    root: &CertificateAuthority,
    trust: &[u8],
    org: &str,
) -> Arc<rustls::ClientConfig> {
    let key = pki::generate_key().expect("key");
    let csr = pki::org_ca_csr(&key, org).expect("csr");
    let ca_cert = root
        .sign_org_ca(&csr, "acme", org, DOMAIN, SystemTime::now())
        .expect("org ca");
    let ca = CertificateAuthority::from_parts(ca_cert, &key.serialize_pem()).expect("ca");
    let leaf = ca
        .issue_gateway_leaf(
            "dc9",
            org,
            DOMAIN,
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .expect("leaf");
    let provider = tls::provider();
    let identity = tls::ReloadableIdentity::new(leaf.chain, &leaf.key, &provider).expect("id");
    let verifier = PeerVerifier::new(
        trust.to_vec().into(),
        DOMAIN,
        RevocationSet::default(),
        &provider,
    )
    .expect("verifier");
    Arc::new(tls::federation_client_config(&identity, Arc::new(verifier), provider).expect("cfg"))
}

fn founder_root(f: &Founder) -> CertificateAuthority {
    let key = std::fs::read_to_string(f.dir.root_key()).expect("root key");
    CertificateAuthority::from_parts(f.root_cert().into(), &key).expect("root")
}

#[tokio::test]
async fn federation_endpoint_authenticates_every_caller() {
    let f = Founder::start().await;
    let root = founder_root(&f);
    let cfg = client_config(&root, &f.root_cert(), "org2");
    let hello =
        fedgw_gateway::federation::hello(&f.endpoint(), cfg.clone(), DOMAIN, "dc9", TIMEOUT)
            .await
            .expect("mTLS hello");
    assert_eq!(hello.server.org, "org1");
    assert_eq!(hello.server.dns_name, "gw-dc1.org1.acme.test");
    assert_eq!(hello.seen_as.org, "org2");
    assert_eq!(
        hello.seen_as.spiffe_id,
        "spiffe://acme.test/org/org2/gw/dc9"
    );

    // a gateway certificate from a foreign consortium root
    let foreign = CertificateAuthority::new_root("evil", DOMAIN, SystemTime::now()).expect("root");
    let bad = client_config(&foreign, &f.root_cert(), "org2");
    assert!(
        fedgw_gateway::federation::hello(&f.endpoint(), bad, DOMAIN, "dc9", TIMEOUT)
            .await
            .is_err()
    );

    // no client certificate at all
    let provider = tls::provider();
    let v = PeerVerifier::new(
        f.root_cert().into(),
        DOMAIN,
        RevocationSet::default(),
        &provider,
    )
    .expect("v");
    let mut anon = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(v))
        .with_no_client_auth();
    anon.alpn_protocols = vec![b"h2".to_vec()];
    let err =
        fedgw_gateway::federation::hello(&f.endpoint(), Arc::new(anon), DOMAIN, "dc9", TIMEOUT)
            .await;
    assert!(err.is_err(), "anonymous client served");

    // revoked: the running verifier's set is replaced, the next handshake fails
    f.running
        .membership
        .revocation()
        .set()
        .replace(["org2".to_owned()].into());
    assert!(
        fedgw_gateway::federation::hello(&f.endpoint(), cfg.clone(), DOMAIN, "dc9", TIMEOUT)
            .await
            .is_err()
    );
    f.running
        .membership
        .revocation()
        .set()
        .replace(Default::default());
    fedgw_gateway::federation::hello(&f.endpoint(), cfg, DOMAIN, "dc9", TIMEOUT)
        .await
        .expect("reinstated");
    f.stop().await;
}

#[tokio::test]
async fn invites_are_bounded_and_only_from_the_root_holder() {
    let f = Founder::start().await;
    let config = fedgw_gateway::config::Config::load(&f.dir.config()).expect("config");
    let spec = |org: &str, ttl: u64, uses: u32| InviteSpec {
        org: org.into(),
        ttl: Duration::from_secs(ttl),
        uses,
    };
    let make = |config: &fedgw_gateway::config::Config, s: &InviteSpec| {
        create_invite(
            &f.running.store,
            config,
            &f.root_cert(),
            &f.endpoint(),
            s,
            SystemTime::now(),
        )
    };
    assert!(
        make(&config, &spec("org1", 60, 1)).is_err(),
        "already a member"
    );
    assert!(make(&config, &spec("Org2", 60, 1)).is_err());
    assert!(make(&config, &spec("org2", 0, 1)).is_err());
    assert!(make(&config, &spec("org2", 60, 0)).is_err());
    assert!(make(&config, &spec("org2", 365 * 86400, 1)).is_err());
    let mut not_root = config.clone();
    not_root.root_holder = false;
    assert!(make(&not_root, &spec("org2", 60, 1)).is_err());
    let (token, expires) = make(&config, &spec("org2", 60, 3)).expect("valid");
    let stored: Invite = f
        .running
        .store
        .invite(&token.id)
        .expect("read")
        .expect("stored");
    assert_eq!(
        (stored.org.as_str(), stored.uses_left, stored.expires_unix),
        ("org2", 3, expires)
    );
    let text = token.to_text();
    let secret = text
        .split('.')
        .nth(2)
        .and_then(|s| s.split('@').next())
        .expect("secret");
    let raw = std::fs::read(f.dir.store()).expect("store file");
    assert!(
        !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "secret stored"
    );
    f.stop().await;
}

#[tokio::test]
async fn idle_join_connections_are_capped() {
    let f = Founder::start().await;
    let provider = tls::provider();
    let pin = pki::spki_sha256(&f.root_cert()).expect("pin");
    let cfg = Arc::new(
        tls::join_client_config(
            Arc::new(fedgw_certs::PinnedRootVerifier::new(pin, &provider)),
            provider,
        )
        .expect("cfg"),
    );
    // every slot, taken from as many sources as the per-source cap requires
    let addr = f.running.info.gateway;
    let mut idle = Vec::new();
    let per_source = fedgw_gateway::listener::MAX_JOIN_PER_SOURCE;
    for i in 0..fedgw_gateway::listener::MAX_JOIN_CONNECTIONS {
        let from = std::net::Ipv4Addr::new(127, 0, 1, 1 + (i / per_source) as u8);
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind((from, 0).into()).expect("bind");
        let tcp = sock.connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        idle.push(
            tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .expect("a join connection"),
        );
    }
    let token = f.invite("org2", 1);
    match join(&token, "org2").await {
        Err(JoinError::Unreachable { .. }) => {}
        other => panic!("expected the join port to turn us away, got {other:?}"),
    }
    drop(idle);
    // the slots come back as the server notices the closed connections
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match join(&token, "org2").await {
            Ok(_) => break,
            Err(JoinError::Unreachable { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("join after the idle connections closed: {e}"),
        }
    }
    f.stop().await;
}

/// Resident set size of this process, bytes (`/proc/self/statm`, second field, in pages).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

#[tokio::test]
async fn join_floods_store_nothing_and_lock_no_new_token_out() {
    use fedgw_proto::v1::join_client::JoinClient;
    use fedgw_proto::v1::join_response::Outcome;
    use fedgw_proto::v1::{JoinRequest, JoinResponse};
    let f = Founder::start().await;
    let provider = tls::provider();
    let pin = pki::spki_sha256(&f.root_cert()).expect("pin");
    let cfg = Arc::new(
        tls::join_client_config(
            Arc::new(fedgw_certs::PinnedRootVerifier::new(pin, &provider)),
            provider,
        )
        .expect("cfg"),
    );
    let tls = fedgw_gateway::net::dial_tls(&f.endpoint(), cfg, TIMEOUT)
        .await
        .expect("join connection");
    let channel = fedgw_gateway::net::single_use_channel(tls)
        .await
        .expect("channel");
    let mut client = JoinClient::new(channel);
    let request = |token_id: String| JoinRequest {
        version: fedgw_proto::JOIN_PROTOCOL_VERSION,
        token_id,
        org: "org9".into(),
        site: "dc1".into(),
        csr_der: vec![1; 64],
        advertise: vec!["127.0.0.1:1".into()],
        proof: vec![0; 32],
        fabric_msp_id: String::new(),
    };
    let reason = |r: JoinResponse| match r.outcome {
        Some(Outcome::Refused(r)) => RefusalReason::try_from(r.reason).expect("reason"),
        other => panic!("expected a refusal, got {other:?}"),
    };

    // ids of 60 KB, each different: refused for their form, nothing kept
    let before = rss_bytes();
    for i in 0..400u32 {
        let mut id = format!("{i:08x}");
        id.push_str(&"a".repeat(60_000));
        let r = client
            .join(request(id))
            .await
            .expect("answered")
            .into_inner();
        assert_eq!(reason(r), RefusalReason::BadRequest);
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 10 << 20, "RSS grew by {grown} bytes");

    // more well-formed unknown ids than the limiter could hold: none is rate-limited
    let flood = fedgw_gateway::join::limiter::MAX_TRACKED as u64 + 200;
    for n in 0..flood {
        let r = client
            .join(request(format!(
                "{:016x}",
                n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            )))
            .await
            .expect("answered")
            .into_inner();
        assert_eq!(reason(r), RefusalReason::UnknownToken, "attempt {n}");
    }
    // and a token created afterwards still admits its org
    join(&f.invite("org2", 1), "org2")
        .await
        .expect("a new token after the flood");
    f.stop().await;
}
