//! The public gateway port under hostile use: idle and silent connections from one or many
//! sources (each a 127.0.0.x address the client binds), join slots, `openssl s_client` on every
//! ALPN, and node certificates posing as gateways on h2, TCP+TLS and QUIC.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::support::*;
use fedgw_certs::{PeerVerifier, RevocationSet, pki, tls};
use fedgw_gateway::config::Admission;
use fedgw_gateway::datadir::DataDir;
use fedgw_gateway::membership::GatewayId;
use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

/// The bound the public-port goals set for a ping and a join under attack.
const UNDER_ATTACK: Duration = Duration::from_secs(2);

fn source(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A TCP connection to `to` from the address `from` (port chosen by the OS).
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

/// `n` connections from `from` that never send a byte.
async fn idle(from: IpAddr, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(connect_from(from, to).await.expect("connect"));
    }
    out
}

fn root_cert(dir: &DataDir) -> Vec<u8> {
    pki::certs_from_pem(&std::fs::read_to_string(dir.root_cert()).expect("root")).expect("pem")[0]
        .to_vec()
}

/// `fedgw ping` from `dir`'s gateway to `endpoint`, bounded by `within`.
async fn ping(dir: &DataDir, endpoint: &str, within: Duration) -> Result<(), String> {
    let (_, cfg) =
        fedgw_gateway::provision::federation_client_config(dir, None).map_err(|e| e.to_string())?;
    fedgw_gateway::federation::hello(endpoint, cfg, DOMAIN, "dc1", within)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A join of `org` into a fresh data dir under `fed`, bounded by `within`.
async fn join(fed: &Fed, org: &str, within: Duration) -> Result<(), String> {
    let token = fed.invite(org).await;
    let dir = DataDir::new(fed.path(org));
    fedgw_gateway::join::client::join_into(token, org, &dir, &network(false), within, &|_| {})
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn idle_connections_from_one_source_leave_ping_and_join_working() {
    let fed = Fed::with_orgs(2).await;
    fed.converged().await;
    let org1 = &fed.gws[0];
    let port = org1.run().info.gateway;
    let _held = idle(source(2), port, 500).await;
    let endpoint = org1.run().info.advertise[0].clone();

    let t = Instant::now();
    ping(&fed.gws[1].dir, &endpoint, UNDER_ATTACK)
        .await
        .expect("ping under attack");
    assert!(t.elapsed() < UNDER_ATTACK, "{:?}", t.elapsed());
    let t = Instant::now();
    join(&fed, "org3", UNDER_ATTACK)
        .await
        .expect("join under attack");
    assert!(t.elapsed() < UNDER_ATTACK, "{:?}", t.elapsed());
    let m = &org1.run().metrics;
    assert!(m.handshakes_total("unknown", "source_limit") >= 400);
}

/// A TLS session with ALPN `fedgw-join/1` from `from`, handshake done, then silent.
async fn join_connection(
    from: IpAddr,
    to: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect_from(from, to).await?;
    let name = ServerName::IpAddress(to.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await?;
    // the server refuses a slot at the ClientHello; the client learns it here at the latest
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Err(std::io::ErrorKind::ConnectionReset.into()),
        _ => Ok(tls),
    }
}

#[tokio::test]
async fn join_slots_are_capped_per_source() {
    let fed = Fed::found(Admission::Operator).await;
    let org1 = &fed.gws[0];
    let port = org1.run().info.gateway;
    let provider = tls::provider();
    let pin = pki::spki_sha256(&root_cert(&org1.dir)).expect("pin");
    let cfg = Arc::new(
        tls::join_client_config(
            Arc::new(fedgw_certs::PinnedRootVerifier::new(pin, &provider)),
            provider,
        )
        .expect("cfg"),
    );
    // one source asks for every join slot there is
    let mut held = Vec::new();
    for _ in 0..fedgw_gateway::listener::MAX_JOIN_CONNECTIONS {
        if let Ok(c) = join_connection(source(2), port, cfg.clone()).await {
            held.push(c);
        }
    }
    assert_eq!(held.len(), fedgw_gateway::listener::MAX_JOIN_PER_SOURCE);
    let t = Instant::now();
    join(&fed, "org2", UNDER_ATTACK)
        .await
        .expect("join from another source");
    assert!(t.elapsed() < UNDER_ATTACK, "{:?}", t.elapsed());
}

#[tokio::test]
async fn member_gateways_keep_a_reserve_when_the_port_is_full() {
    let mut fed = Fed::found_with(Admission::Operator, |c| c.port.idle_hello_ms = 10_000).await;
    fed.add("org2", false, |_| {}).await;
    fed.converged().await;
    let org1 = &fed.gws[0];
    let port = org1.run().info.gateway;
    let limits = fedgw_gateway::listener::PortLimits::default();
    // every slot open to unknown sources, held by silent connections from 20 addresses
    let per = limits.max_pending_per_source;
    let sources = (limits.max_pending_handshakes - limits.member_reserve).div_ceil(per) + 2;
    let mut held = Vec::new();
    for i in 0..sources {
        held.extend(idle(source(10 + i as u8), port, per).await);
    }
    let m = &org1.run().metrics;
    assert!(m.handshakes_total("unknown", "port_full") > 0);
    // a stranger is turned away at once
    let mut s = connect_from(source(200), port).await.expect("connect");
    let mut b = [0u8; 1];
    let closed = tokio::time::timeout(WAIT, s.read(&mut b))
        .await
        .expect("closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // org2 reached org1 from 127.0.0.1 before: it still gets in
    let endpoint = org1.run().info.advertise[0].clone();
    let t = Instant::now();
    ping(&fed.gws[1].dir, &endpoint, UNDER_ATTACK)
        .await
        .expect("member ping through the reserve");
    assert!(t.elapsed() < UNDER_ATTACK, "{:?}", t.elapsed());
    drop(held);
}

#[tokio::test]
async fn silent_connections_are_closed_under_pressure() {
    // advertised by name, so 127.0.0.1 is no member address (IP literals advertised are)
    let fed = Fed::found_with(Admission::Operator, |c| {
        c.advertise = vec!["localhost:0".into()];
    })
    .await;
    let org1 = &fed.gws[0];
    let port = org1.run().info.gateway;
    let limits = fedgw_gateway::listener::PortLimits::default();
    let per = limits.max_pending_per_source;
    let sources = limits.max_pending_handshakes.div_ceil(per) + 2;
    let mut held = Vec::new();
    for i in 0..sources {
        held.extend(idle(source(10 + i as u8), port, per).await);
    }
    // nobody has reached org1 before: 127.0.0.1 is a stranger too, turned away for now...
    let mut s = connect_from(source(1), port).await.expect("connect");
    let mut b = [0u8; 1];
    let closed = tokio::time::timeout(WAIT, s.read(&mut b))
        .await
        .expect("closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // ...and let in once the silent connections are closed (idle_hello_ms, 1 s by default)
    let bound = Duration::from_millis(limits.idle_hello_ms) + UNDER_ATTACK;
    let t = Instant::now();
    let token = fed.invite("org2").await;
    let dir = DataDir::new(fed.path("org2"));
    loop {
        match fedgw_gateway::join::client::join_into(
            token.clone(),
            "org2",
            &dir,
            &network(false),
            bound,
            &|_| {},
        )
        .await
        {
            Ok(_) => break,
            Err(e) if t.elapsed() < bound => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no join within {bound:?}: {e}"),
        }
    }
    let m = &org1.run().metrics;
    assert!(m.handshakes_total("unknown", "idle") > 0);
    drop(held);
}

/// Runs `openssl s_client` against `port` with `alpn`, optionally presenting `client` (a
/// certificate chain file and key file); returns whether it completed the handshake.
async fn s_client(
    port: u16,
    alpn: &str,
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> (bool, String) {
    // not std's: the gateway runs on this test's runtime and must answer meanwhile
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args([
            "-alpn",
            alpn,
            "-tls1_3",
            "-brief",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(ca)
        .stdin(std::process::Stdio::null());
    if let Some((cert, key)) = client {
        // the file holds the leaf and the org CA; -cert sends only the first
        cmd.arg("-cert").arg(cert).arg("-cert_chain").arg(cert);
        cmd.arg("-key").arg(key);
    }
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("openssl s_client ends")
        .expect("openssl must be installed (scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && text.contains("CONNECTION ESTABLISHED"),
        text,
    )
}

#[tokio::test]
async fn openssl_completes_the_handshake_on_every_alpn() {
    let fed = Fed::with_orgs(2).await;
    fed.converged().await;
    let org1 = &fed.gws[0];
    let org2 = &fed.gws[1].dir;
    let port = org1.run().info.gateway.port();
    let m = &org1.run().metrics;
    let member = Some((org2.gateway_cert(), org2.gateway_key()));
    for (alpn, kind, client) in [
        ("h2", "federation", member.as_ref()),
        ("fedgw/1", "tunnel", member.as_ref()),
        ("fedgw-join/1", "join", None),
    ] {
        let before = m.handshakes_total(kind, "ok");
        let failed = m.handshakes_total(kind, "failed");
        let client = client.map(|(c, k)| (c.as_path(), k.as_path()));
        let (ok, text) = s_client(port, alpn, &org2.root_cert(), client).await;
        assert!(ok, "{alpn}: {text}");
        let deadline = Instant::now() + WAIT;
        while m.handshakes_total(kind, "ok") == before {
            assert!(
                Instant::now() < deadline,
                "{alpn} not accepted by the gateway:\n{}",
                m.encode()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(m.handshakes_total(kind, "failed"), failed, "{alpn}");
    }
}

/// A leaf for `gw-<site>.<org>.<domain>` signed by the org CA in `dir` the way any certificate
/// could be (rcgen), with only serverAuth and clientAuth: a node leaf from `fedgw cert issue
/// gw-dc5` before gateway names were reserved, or a gateway leaf from before gateway leaves
/// carried their own key usage. Returns the chain (leaf, org CA) and the leaf's key.
fn leaf_without_gateway_usage(
    dir: &DataDir,
    org: &str,
    site: &str,
) -> (
    Vec<rustls_pki_types::CertificateDer<'static>>,
    rcgen::KeyPair,
) {
    let ca_pem = std::fs::read_to_string(dir.org_cert()).expect("org CA");
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.org_key()).expect("key"))
        .expect("org CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let name = format!("gw-{site}.{org}.{DOMAIN}");
    let mut params = rcgen::CertificateParams::new(vec![name.clone()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = params.signed_by(&key, &issuer).expect("signed");
    let ca = pki::certs_from_pem(&ca_pem).expect("pem").remove(0);
    (vec![leaf.der().clone(), ca], key)
}

fn node_leaf_named_as_gateway(org2: &DataDir, site: &str) -> tls::ReloadableIdentity {
    let (chain, key) = leaf_without_gateway_usage(org2, "org2", site);
    tls::ReloadableIdentity::new(
        chain,
        &rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
        &tls::provider(),
    )
    .expect("identity")
}

/// A real gateway leaf from org2's CA for a site org2 never published.
fn gateway_leaf_for(org2: &DataDir, site: &str) -> tls::ReloadableIdentity {
    let ca = fedgw_certs::CertificateAuthority::from_parts(
        pki::certs_from_pem(&std::fs::read_to_string(org2.org_cert()).expect("ca")).expect("pem")
            [0]
        .clone(),
        &std::fs::read_to_string(org2.org_key()).expect("key"),
    )
    .expect("org CA");
    let leaf = ca
        .issue_gateway_leaf(
            site,
            "org2",
            DOMAIN,
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .expect("leaf");
    tls::ReloadableIdentity::new(leaf.chain, &leaf.key, &tls::provider()).expect("identity")
}

fn verifier(root: &[u8]) -> Arc<PeerVerifier> {
    Arc::new(
        PeerVerifier::new(
            root.to_vec().into(),
            DOMAIN,
            RevocationSet::default(),
            &tls::provider(),
        )
        .expect("verifier"),
    )
}

/// Whether the gateway at `to` ends a TCP+TLS tunnel connection made with `identity` (EOF or
/// an error on read, within [`WAIT`]); a connection it keeps is answered `false` after `keep`.
async fn tcp_tunnel_ended(
    to: SocketAddr,
    identity: &tls::ReloadableIdentity,
    root: &[u8],
    keep: Duration,
) -> bool {
    let cfg = Arc::new(
        tls::tunnel_client_config(identity, verifier(root), tls::provider()).expect("cfg"),
    );
    let tcp = TcpStream::connect(to).await.expect("connect");
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::IpAddress(to.ip().into()), tcp)
        .await
    else {
        return true;
    };
    let mut b = [0u8; 64];
    match tokio::time::timeout(keep, tls.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Whether the gateway's QUIC endpoint at `to` (org1's) ends a connection made with
/// `identity`, within `keep`.
async fn quic_ended(
    to: SocketAddr,
    identity: &tls::ReloadableIdentity,
    root: &[u8],
    keep: Duration,
) -> bool {
    let cfg = tls::tunnel_client_config(identity, verifier(root), tls::provider()).expect("cfg");
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).expect("quic cfg");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("udp");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let server = format!("gw-dc1.org1.{DOMAIN}");
    let ended = match endpoint.connect(to, &server).expect("connect").await {
        Err(_) => true,
        Ok(conn) => tokio::time::timeout(keep, conn.closed()).await.is_ok(),
    };
    endpoint.close(0u32.into(), b"");
    ended
}

#[tokio::test]
async fn a_node_leaf_is_refused_on_h2_tcp_tls_and_quic() {
    let fed = Fed::with_orgs(2).await;
    fed.converged().await;
    let org1 = &fed.gws[0];
    let org2 = &fed.gws[1].dir;
    let root = root_cert(org2);
    let to = org1.run().info.gateway;
    let endpoint = org1.run().info.advertise[0].clone();
    let m = &org1.run().metrics;
    let impostor = node_leaf_named_as_gateway(org2, "dc5");

    // h2: the federation endpoint
    let cfg = Arc::new(
        tls::federation_client_config(&impostor, verifier(&root), tls::provider()).expect("cfg"),
    );
    let err = fedgw_gateway::federation::hello(&endpoint, cfg, DOMAIN, "dc5", WAIT).await;
    assert!(err.is_err(), "node leaf served on h2");
    // TCP+TLS tunnel
    let failed = m.handshakes_total("tunnel", "failed");
    assert!(tcp_tunnel_ended(to, &impostor, &root, WAIT).await);
    assert_eq!(m.handshakes_total("tunnel", "failed"), failed + 1);
    assert_eq!(
        org1.run()
            .tunnels
            .link_transport(&GatewayId::new("org2", "dc5")),
        None
    );
    // QUIC
    let quic_to = org1.run().tunnels.quic_addr().expect("QUIC endpoint");
    let failed = m.handshakes_total("tunnel-quic", "failed");
    assert!(quic_ended(quic_to, &impostor, &root, WAIT).await);
    wait_for("the QUIC handshake to fail", || {
        m.handshakes_total("tunnel-quic", "failed") > failed
    })
    .await;

    // a real gateway leaf of org2 for a site org2 never published: no tunnel either
    let unpublished = gateway_leaf_for(org2, "dc5");
    assert!(tcp_tunnel_ended(to, &unpublished, &root, WAIT).await);
    assert!(quic_ended(quic_to, &unpublished, &root, WAIT).await);
    assert_eq!(
        org1.run()
            .tunnels
            .link_transport(&GatewayId::new("org2", "dc5")),
        None
    );
    // while org2's published site is served on both
    let published = gateway_leaf_for(org2, "dc1");
    let keep = Duration::from_millis(300);
    assert!(!tcp_tunnel_ended(to, &published, &root, keep).await);
    assert!(!quic_ended(quic_to, &published, &root, keep).await);
}

#[test]
fn cert_issue_refuses_gateway_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = DataDir::new(tmp.path().join("org1"));
    fedgw_gateway::provision::init(
        &dir,
        &fedgw_gateway::provision::InitOptions {
            consortium: "acme".into(),
            domain: DOMAIN.into(),
            org: "org1".into(),
            admission: Admission::Operator,
            consensus: Default::default(),
            genesis: None,
            network: network(false),
        },
        SystemTime::now(),
    )
    .expect("init");
    let fedgw = fedgw_tests::Fedgw::new(env!("CARGO_BIN_EXE_fedgw"));
    let d = dir.root().display().to_string();
    let out = tmp.path().join("tls").display().to_string();
    for args in [
        vec!["gw-dc5"],
        vec!["tm1", "--dns", "gw-dc5.org1.acme.test"],
    ] {
        let mut argv = vec!["cert", "issue"];
        argv.extend(&args);
        argv.extend(["--data-dir", &d, "--out-dir", &out]);
        let run = fedgw.run(argv).expect("spawn");
        assert_eq!(run.code, Some(64), "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("reserved for gateways"),
            "{}",
            run.stderr
        );
    }
    assert!(!tmp.path().join("tls").exists(), "nothing written");
}

#[test]
fn a_gateway_leaf_from_before_the_gateway_usage_is_reissued_at_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = DataDir::new(tmp.path().join("org1"));
    fedgw_gateway::provision::init(
        &dir,
        &fedgw_gateway::provision::InitOptions {
            consortium: "acme".into(),
            domain: DOMAIN.into(),
            org: "org1".into(),
            admission: Admission::Operator,
            consensus: Default::default(),
            genesis: None,
            network: network(false),
        },
        SystemTime::now(),
    )
    .expect("init");
    // the data dir of an older release: a fresh leaf for the right name, without the usage
    let (chain, key) = leaf_without_gateway_usage(&dir, "org1", "dc1");
    std::fs::write(dir.gateway_cert(), pki::certs_to_pem(&chain)).expect("write leaf");
    std::fs::write(dir.gateway_key(), key.serialize_pem()).expect("write key");
    let loaded = fedgw_gateway::provision::load(&dir).expect("load");
    let (leaf, _) = fedgw_gateway::provision::current_leaf(&dir, &loaded, SystemTime::now())
        .expect("current leaf");
    assert!(pki::is_gateway_leaf(&leaf.chain[0]));
    assert_ne!(leaf.chain[0], chain[0], "reissued");
    let on_disk = pki::certs_from_pem(&std::fs::read_to_string(dir.gateway_cert()).expect("pem"))
        .expect("pem");
    assert_eq!(on_disk[0], leaf.chain[0], "and written");
}

#[test]
fn a_replica_gets_a_leaf_naming_its_replica_and_the_first_gateway_keeps_its_spiffe_id() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = DataDir::new(tmp.path().join("org1"));
    fedgw_gateway::provision::init(
        &dir,
        &fedgw_gateway::provision::InitOptions {
            consortium: "acme".into(),
            domain: DOMAIN.into(),
            org: "org1".into(),
            admission: Admission::Operator,
            consensus: Default::default(),
            genesis: None,
            network: network(false),
        },
        SystemTime::now(),
    )
    .expect("init");
    let identity = |leaf: &[u8]| {
        let id = fedgw_certs::peer_identity(leaf, DOMAIN).expect("identity");
        (
            GatewayId::from_identity(&id, DOMAIN).expect("gateway id"),
            id,
        )
    };
    let loaded = fedgw_gateway::provision::load(&dir).expect("load");
    let (first, _) = fedgw_gateway::provision::current_leaf(&dir, &loaded, SystemTime::now())
        .expect("current leaf");
    let (id, peer) = identity(&first.chain[0]);
    assert_eq!(id, GatewayId::new("org1", "dc1"));
    assert_eq!(loaded.config.gateway_id(), id);
    assert_eq!(
        peer.spiffe_id.as_deref(),
        Some(format!("spiffe://{DOMAIN}/org/org1/gw/dc1").as_str()),
        "unchanged for a site's first gateway"
    );

    // the same data dir named as replica r2: the leaf for the site alone is replaced
    let mut config = loaded.config.clone();
    config.replica = "r2".into();
    config.replica_index = 1;
    std::fs::write(dir.config(), config.to_toml()).expect("write config");
    let loaded = fedgw_gateway::provision::load(&dir).expect("load");
    let (leaf, _) = fedgw_gateway::provision::current_leaf(&dir, &loaded, SystemTime::now())
        .expect("current leaf");
    assert_ne!(leaf.chain[0], first.chain[0], "reissued");
    let (id, peer) = identity(&leaf.chain[0]);
    assert_eq!(id, GatewayId::replica("org1", "dc1", "r2"));
    assert_eq!(
        peer.dns_name,
        format!("gw-dc1.org1.{DOMAIN}"),
        "the site's name"
    );
    assert_eq!(loaded.config.gateway_id(), id);

    // a replica without its index is refused at load
    config.replica_index = 0;
    std::fs::write(dir.config(), config.to_toml()).expect("write config");
    assert!(fedgw_gateway::provision::load(&dir).is_err());
}
