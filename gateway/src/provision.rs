//! Creating and loading a gateway's data dir: the founder's `init`, a joiner's files after
//! admission, and the gateway leaf (issued locally from the org CA, renewed at half-life).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use fedgw_certs::{CertificateAuthority, IssuedLeaf, PkiError, pki};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use sha2::Digest;

use crate::config::{Admission, Config, ConfigError, PeerConfig};
use crate::datadir::DataDir;
use crate::store::{self, Member, Store, StoreError};

/// Errors creating or loading a data dir.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A file could not be read or written.
    #[error("{what}: {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate or key is invalid.
    #[error("{what}")]
    Pki {
        /// Which certificate or key.
        what: String,
        /// The PKI error.
        #[source]
        source: PkiError,
    },
    /// The genesis file is not a JSON object, or does not match its recorded hash.
    #[error("genesis: {0}")]
    Genesis(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data dir already holds a gateway's files (this one, the first found): `init` never
    /// overwrites keys or a store.
    #[error("{} already exists: the data dir holds a gateway; use an empty directory", .0.display())]
    Occupied(std::path::PathBuf),
    /// `--advertise` is missing, or its first endpoint has no port to listen on.
    #[error("{0}")]
    Advertise(&'static str),
    /// The founder's own member record could not be signed with the root key.
    #[error("signing the founder's member record")]
    Seal(#[source] fedgw_certs::envelope::EnvelopeError),
    /// The admission answer carries no consortium info (the join service must send it).
    #[error("the admission answer carries no consortium info")]
    NoConsortium,
    /// The TLS configuration could not be built.
    #[error("TLS setup failed")]
    Tls(#[from] rustls::Error),
}

fn io(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ProvisionError {
    let path = path.to_owned();
    move |source| ProvisionError::Io { what, path, source }
}

fn pki_err(what: impl Into<String>) -> impl FnOnce(PkiError) -> ProvisionError {
    let what = what.into();
    move |source| ProvisionError::Pki { what, source }
}

/// The network settings `init` and `join` share.
#[derive(Debug, Clone)]
pub struct NetworkOptions {
    /// This site's label.
    pub site: String,
    /// Advertised endpoints.
    pub advertise: Vec<String>,
    /// Gateway listen address (default `0.0.0.0:<advertise port>`).
    pub listen: Option<SocketAddr>,
    /// DNS listen address.
    pub dns: SocketAddr,
    /// Metrics listen address.
    pub metrics: SocketAddr,
    /// Gateway leaf lifetime.
    pub leaf_lifetime: Duration,
    /// The site accepts no inbound connections.
    pub outbound_only: bool,
    /// How remote nodes get local addresses.
    pub addresses: crate::addressing::AddressMode,
    /// Data-plane tunnel settings.
    pub tunnel: crate::tunnel::TunnelConfig,
    /// The org's Fabric MSP ID (`--msp-id`; `None`: `<Org>MSP`), checked with
    /// [`crate::fabric::validate_msp_id`].
    pub fabric_msp_id: Option<String>,
}

impl NetworkOptions {
    fn listen(&self) -> Result<SocketAddr, ProvisionError> {
        if let Some(l) = self.listen {
            return Ok(l);
        }
        let first = self
            .advertise
            .first()
            .ok_or(ProvisionError::Advertise("--advertise is required"))?;
        let port = first
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or(ProvisionError::Advertise(
                "the first --advertise endpoint has no port (HOST:PORT)",
            ))?;
        Ok(SocketAddr::from(([0, 0, 0, 0], port)))
    }
}

/// What `fedgw init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Consortium name.
    pub consortium: String,
    /// Consortium domain.
    pub domain: String,
    /// The founder's org.
    pub org: String,
    /// Admission policy.
    pub admission: Admission,
    /// The chain's consensus.
    pub consensus: crate::config::Consensus,
    /// Genesis file contents, if any.
    pub genesis: Option<Vec<u8>>,
    /// Network settings.
    pub network: NetworkOptions,
}

fn check_genesis(genesis: &[u8]) -> Result<String, ProvisionError> {
    let value: serde_json::Value = serde_json::from_slice(genesis)
        .map_err(|e| ProvisionError::Genesis(format!("not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ProvisionError::Genesis("not a JSON object".into()));
    }
    Ok(hex(&sha2::Sha256::digest(genesis)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a configuration about to be written to `dir`, as `fedgw run` will read it.
fn validate(dir: &DataDir, config: &Config) -> Result<(), ProvisionError> {
    config.validate().map_err(|reason| {
        ProvisionError::Config(crate::config::ConfigError::Invalid {
            path: dir.config(),
            reason,
        })
    })
}

fn write_config(dir: &DataDir, config: &Config) -> Result<(), ProvisionError> {
    validate(dir, config)?;
    dir.write_public(&dir.config(), config.to_toml().as_bytes())
        .map_err(io("writing config", &dir.config()))
}

/// Founds a consortium in `dir`: root CA, the founder's org CA (signed from a CSR like any
/// joiner's), a gateway leaf, the genesis copy, the store with the founder as first member, and
/// `fedgw.toml` last (its presence marks a complete data dir).
pub fn init(dir: &DataDir, opts: &InitOptions, now: SystemTime) -> Result<Config, ProvisionError> {
    let net = &opts.network;
    let config = Config {
        consortium: opts.consortium.clone(),
        domain: opts.domain.clone(),
        org: opts.org.clone(),
        site: net.site.clone(),
        replica: String::new(),
        replica_index: 0,
        advertise: net.advertise.clone(),
        listen: net.listen()?,
        dns: net.dns,
        metrics: net.metrics,
        admission: opts.admission,
        consensus: opts.consensus,
        leaf_lifetime_secs: net.leaf_lifetime.as_secs(),
        root_holder: true,
        genesis_sha256: opts.genesis.as_deref().map(check_genesis).transpose()?,
        fabric_msp_id: net.fabric_msp_id.clone(),
        outbound_only: net.outbound_only,
        sync: Default::default(),
        addresses: net.addresses.clone(),
        tunnel: net.tunnel.clone(),
        dns_rate_limit_qps: 10_000,
        dns_tcp_max_per_source: crate::config::DEFAULT_DNS_TCP_PER_SOURCE,
        dns_tcp_max_connections: crate::config::DEFAULT_DNS_TCP_CONNECTIONS,
        port: Default::default(),
        peering: Default::default(),
        console: Default::default(),
        federation: Default::default(),
        peers: vec![],
    };
    validate(dir, &config)?;
    if let Some(file) = dir.occupied() {
        return Err(ProvisionError::Occupied(file));
    }
    dir.create_fresh()
        .map_err(io("creating data dir", dir.root()))?;

    let root = CertificateAuthority::new_root(&opts.consortium, &opts.domain, now)
        .map_err(pki_err("creating the root CA"))?;
    let org_key = pki::generate_key().map_err(pki_err("generating the org CA key"))?;
    let csr = pki::org_ca_csr(&org_key, &opts.org).map_err(pki_err("building the org CA CSR"))?;
    let org_cert = root
        .sign_org_ca(&csr, &opts.consortium, &opts.org, &opts.domain, now)
        .map_err(pki_err("signing the org CA"))?;

    dir.write_secret(&dir.root_key(), root.key_pem().as_bytes())
        .map_err(io("writing key", &dir.root_key()))?;
    dir.write_public(
        &dir.root_cert(),
        pki::certs_to_pem(&[root.cert().clone()]).as_bytes(),
    )
    .map_err(io("writing certificate", &dir.root_cert()))?;
    write_org_ca(dir, &org_cert, &org_key.serialize_pem())?;
    if let Some(g) = &opts.genesis {
        dir.write_public(&dir.genesis(), g)
            .map_err(io("writing genesis", &dir.genesis()))?;
    }
    let org_ca = CertificateAuthority::from_parts(org_cert.clone(), &org_key.serialize_pem())
        .map_err(pki_err("loading the org CA"))?;
    issue_leaf(dir, &config, &org_ca, now)?;
    dir.create_store_file()
        .map_err(io("creating the store", &dir.store()))?;
    let store = Store::open(&dir.store())?;
    store.put_member(&Member {
        org: opts.org.clone(),
        org_ca_pem: pki::certs_to_pem(std::slice::from_ref(&org_cert)),
        site: net.site.clone(),
        advertise: net.advertise.clone(),
        admitted_unix: store::unix(now),
    })?;
    // the founder's own root-signed member record: the first record of the consortium
    let signer = root.envelope_signer().map_err(ProvisionError::Seal)?;
    let member = crate::membership::record::seal(
        &signer,
        &opts.org,
        "",
        store::unix(now).max(1) * 1000,
        fedgw_proto::v1::record_body::Body::Member(fedgw_proto::v1::MemberRecord {
            org_ca_der: org_cert.to_vec(),
            fabric_msp_id: net.fabric_msp_id.clone().unwrap_or_default(),
            admitted_unix: i64::try_from(store::unix(now)).unwrap_or(0),
        }),
    )
    .map_err(ProvisionError::Seal)?;
    // a record this function just sealed always decodes
    let key = crate::membership::storage_key(&member)
        .expect("a freshly sealed member record decodes to its storage key");
    let audit = crate::store::AuditEvent {
        kind: "member".to_owned(),
        org: opts.org.clone(),
        subject: String::new(),
        signer: "root".to_owned(),
        record_hash: sha2::Sha256::digest(&member).into(),
        record_key: Some(key.clone()),
    };
    store.put_records(&[(key, std::sync::Arc::new(member))], &[audit])?;
    // closed before the config appears: a `fedgw run --wait-for-config` opens it right away
    drop(store);
    write_config(dir, &config)?;
    Ok(config)
}

fn write_org_ca(
    dir: &DataDir,
    cert: &CertificateDer<'_>,
    key_pem: &str,
) -> Result<(), ProvisionError> {
    dir.write_secret(&dir.org_key(), key_pem.as_bytes())
        .map_err(io("writing key", &dir.org_key()))?;
    dir.write_public(
        &dir.org_cert(),
        pki::certs_to_pem(std::slice::from_ref(cert)).as_bytes(),
    )
    .map_err(io("writing certificate", &dir.org_cert()))
}

/// What a joiner writes after admission.
#[derive(Debug)]
pub struct JoinedFiles<'a> {
    /// The org name.
    pub org: &'a str,
    /// The admission as received, checked by the join client.
    pub admitted: &'a fedgw_proto::v1::Admitted,
    /// The consortium root certificate (matched the pin).
    pub root: &'a CertificateDer<'static>,
    /// The org CA certificate (certifies the joiner's own key).
    pub org_ca: &'a CertificateDer<'static>,
    /// The org CA key, PKCS#8 PEM (generated locally, never sent).
    pub org_key_pem: &'a str,
    /// Network settings.
    pub network: &'a NetworkOptions,
}

/// Writes a joiner's data dir (created beforehand with [`DataDir::create_fresh`]).
pub fn write_joined(
    dir: &DataDir,
    files: &JoinedFiles<'_>,
    now: SystemTime,
) -> Result<Config, ProvisionError> {
    let admitted = files.admitted;
    let consortium = admitted
        .consortium
        .clone()
        .ok_or(ProvisionError::NoConsortium)?;
    let admission = match fedgw_proto::v1::AdmissionPolicy::try_from(consortium.admission) {
        Ok(fedgw_proto::v1::AdmissionPolicy::Majority) => Admission::Majority,
        Ok(fedgw_proto::v1::AdmissionPolicy::All) => Admission::All,
        _ => Admission::Operator,
    };
    let net = files.network;
    let genesis = (!admitted.genesis.is_empty()).then_some(admitted.genesis.as_slice());
    let config = Config {
        consortium: consortium.name.clone(),
        domain: consortium.domain.clone(),
        org: files.org.to_owned(),
        site: net.site.clone(),
        replica: String::new(),
        replica_index: 0,
        advertise: net.advertise.clone(),
        listen: net.listen()?,
        dns: net.dns,
        metrics: net.metrics,
        admission,
        consensus: crate::config::Consensus::from_pb(consortium.consensus),
        leaf_lifetime_secs: net.leaf_lifetime.as_secs(),
        root_holder: false,
        genesis_sha256: genesis.map(check_genesis).transpose()?,
        fabric_msp_id: net.fabric_msp_id.clone(),
        outbound_only: net.outbound_only,
        sync: Default::default(),
        addresses: net.addresses.clone(),
        tunnel: net.tunnel.clone(),
        dns_rate_limit_qps: 10_000,
        dns_tcp_max_per_source: crate::config::DEFAULT_DNS_TCP_PER_SOURCE,
        dns_tcp_max_connections: crate::config::DEFAULT_DNS_TCP_CONNECTIONS,
        port: Default::default(),
        peering: Default::default(),
        console: Default::default(),
        federation: Default::default(),
        peers: admitted
            .gateways
            .iter()
            .map(|g| PeerConfig {
                org: g.org.clone(),
                site: g.site.clone(),
                replica: String::new(),
                advertise: g.advertise.clone(),
            })
            .collect(),
    };
    validate(dir, &config)?;
    dir.write_public(
        &dir.root_cert(),
        pki::certs_to_pem(std::slice::from_ref(files.root)).as_bytes(),
    )
    .map_err(io("writing certificate", &dir.root_cert()))?;
    write_org_ca(dir, files.org_ca, files.org_key_pem)?;
    if let Some(g) = genesis {
        dir.write_public(&dir.genesis(), g)
            .map_err(io("writing genesis", &dir.genesis()))?;
    }
    let org_ca = CertificateAuthority::from_parts(files.org_ca.clone(), files.org_key_pem)
        .map_err(pki_err("loading the org CA"))?;
    issue_leaf(dir, &config, &org_ca, now)?;
    // the inviter's records (with our own member record); verified when the gateway loads them
    dir.create_store_file()
        .map_err(io("creating the store", &dir.store()))?;
    let store = Store::open(&dir.store())?;
    let snapshot: Vec<_> = admitted
        .snapshot
        .iter()
        .filter_map(|b| {
            Some((
                crate::membership::storage_key(b)?,
                std::sync::Arc::new(b.clone()),
            ))
        })
        .collect();
    // the audit trail starts with the records that verify now (all of them, from a good root)
    let audit: Vec<_> =
        fedgw_certs::envelope::SignerVerifier::new(files.root.to_vec(), &consortium.domain)
            .map(|v| {
                let lookup = (v, now);
                admitted
                    .snapshot
                    .iter()
                    .filter_map(|b| {
                        crate::membership::record::verify(b, &lookup, &consortium.domain).ok()
                    })
                    .map(|v| crate::membership::record::audit_event(&v))
                    .collect()
            })
            .unwrap_or_default();
    store.put_records(&snapshot, &audit)?;
    drop(store);
    write_config(dir, &config)?;
    Ok(config)
}

/// A loaded data dir: config, root certificate, org CA, genesis.
#[derive(Debug)]
pub struct Loaded {
    /// `fedgw.toml`.
    pub config: Config,
    /// The consortium root certificate.
    pub root_cert: CertificateDer<'static>,
    /// The root CA with its key (founder only).
    pub root_ca: Option<CertificateAuthority>,
    /// This org's CA with its key.
    pub org_ca: CertificateAuthority,
    /// The genesis file, checked against its hash.
    pub genesis: Option<Vec<u8>>,
}

fn read(path: &std::path::Path) -> Result<String, ProvisionError> {
    std::fs::read_to_string(path).map_err(io("reading", path))
}

fn single_cert(path: &std::path::Path) -> Result<CertificateDer<'static>, ProvisionError> {
    let mut certs =
        pki::certs_from_pem(&read(path)?).map_err(pki_err(path.display().to_string()))?;
    Ok(certs.swap_remove(0))
}

/// Loads and checks a data dir.
pub fn load(dir: &DataDir) -> Result<Loaded, ProvisionError> {
    let config = Config::load(&dir.config())?;
    let root_cert = single_cert(&dir.root_cert())?;
    let org_cert = single_cert(&dir.org_cert())?;
    let org_ca = CertificateAuthority::from_parts(org_cert, &read(&dir.org_key())?)
        .map_err(pki_err(dir.org_key().display().to_string()))?;
    let root_ca = if config.root_holder {
        Some(
            CertificateAuthority::from_parts(root_cert.clone(), &read(&dir.root_key())?)
                .map_err(pki_err(dir.root_key().display().to_string()))?,
        )
    } else {
        None
    };
    let genesis = match &config.genesis_sha256 {
        None => None,
        Some(want) => {
            let bytes = std::fs::read(dir.genesis()).map_err(io("reading", &dir.genesis()))?;
            if hex(&sha2::Sha256::digest(&bytes)) != *want {
                return Err(ProvisionError::Genesis(format!(
                    "{} does not match genesis_sha256 in fedgw.toml",
                    dir.genesis().display()
                )));
            }
            Some(bytes)
        }
    };
    Ok(Loaded {
        config,
        root_cert,
        root_ca,
        org_ca,
        genesis,
    })
}

/// Issues a fresh gateway leaf from the org CA and writes `gateway.pem` / `gateway.key`.
pub fn issue_leaf(
    dir: &DataDir,
    config: &Config,
    org_ca: &CertificateAuthority,
    now: SystemTime,
) -> Result<IssuedLeaf, ProvisionError> {
    let leaf = org_ca
        .issue_replica_leaf(
            &config.site,
            &config.replica,
            &config.org,
            &config.domain,
            Duration::from_secs(config.leaf_lifetime_secs),
            now,
        )
        .map_err(pki_err("issuing the gateway leaf"))?;
    let key_pem = pem_key(&leaf.key);
    dir.write_secret(&dir.gateway_key(), key_pem.as_bytes())
        .map_err(io("writing key", &dir.gateway_key()))?;
    dir.write_public(
        &dir.gateway_cert(),
        pki::certs_to_pem(&leaf.chain).as_bytes(),
    )
    .map_err(io("writing certificate", &dir.gateway_cert()))?;
    Ok(leaf)
}

pub(crate) fn pem_key(key: &PrivatePkcs8KeyDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(key.secret_pkcs8_der());
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// Loads the current gateway leaf, or issues a new one when it is missing, unreadable, for
/// another name or replica (SPIFFE ID), without the fedgw-gateway extended key usage (a leaf written before gateway
/// leaves carried it: peers refuse it), or past half its lifetime. Returns the leaf and when to renew it next.
pub fn current_leaf(
    dir: &DataDir,
    loaded: &Loaded,
    now: SystemTime,
) -> Result<(IssuedLeaf, SystemTime), ProvisionError> {
    let lifetime = Duration::from_secs(loaded.config.leaf_lifetime_secs);
    let existing = (|| {
        use rustls_pki_types::pem::PemObject;
        let chain = pki::certs_from_pem(&std::fs::read_to_string(dir.gateway_cert()).ok()?).ok()?;
        let key = PrivatePkcs8KeyDer::from_pem_file(dir.gateway_key()).ok()?;
        let not_after = pki::not_after(chain.first()?).ok()?;
        let id = fedgw_certs::peer_identity(chain.first()?, &loaded.config.domain).ok()?;
        let want = fedgw_certs::names::gateway_dns_name(
            &loaded.config.site,
            &loaded.config.org,
            &loaded.config.domain,
        );
        let want_spiffe = fedgw_certs::names::replica_spiffe_id(
            &loaded.config.site,
            &loaded.config.replica,
            &loaded.config.org,
            &loaded.config.domain,
        );
        let current = id.dns_name == want
            && id.spiffe_id.as_deref() == Some(want_spiffe.as_str())
            && chain.get(1) == Some(loaded.org_ca.cert())
            && pki::is_gateway_leaf(chain.first()?);
        current.then_some(IssuedLeaf {
            chain,
            key,
            not_after,
        })
    })();
    let leaf = match existing {
        Some(leaf) if leaf.not_after > now + lifetime / 2 => leaf,
        _ => issue_leaf(dir, &loaded.config, &loaded.org_ca, now)?,
    };
    let renew_at = leaf.not_after.checked_sub(lifetime / 2).unwrap_or(now);
    Ok((leaf, renew_at))
}

/// A federation client TLS config for the gateway of `dir`: presents its gateway leaf (renewed
/// first if due), trusts the consortium root, accepts a server dialled by any host name or
/// address that proves a gateway identity (the caller reads which one from its certificate),
/// and with `expect_org` requires that gateway to be of that org. Returns the loaded data dir
/// too.
pub fn federation_client_config(
    dir: &DataDir,
    expect_org: Option<&str>,
) -> Result<(Loaded, std::sync::Arc<rustls::ClientConfig>), ProvisionError> {
    use fedgw_certs::tls;
    let loaded = load(dir)?;
    let provider = tls::provider();
    let (leaf, _) = current_leaf(dir, &loaded, SystemTime::now())?;
    let identity = tls::ReloadableIdentity::new(leaf.chain, &leaf.key, &provider)?;
    let mut verifier = fedgw_certs::PeerVerifier::new(
        loaded.root_cert.clone(),
        &loaded.config.domain,
        fedgw_certs::RevocationSet::default(),
        &provider,
    )?
    .any_server_name();
    if let Some(org) = expect_org {
        verifier = verifier.expecting_org(org);
    }
    let config = tls::federation_client_config(&identity, std::sync::Arc::new(verifier), provider)?;
    Ok((loaded, std::sync::Arc::new(config)))
}
