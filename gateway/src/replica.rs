//! Adding a replica to a site (docs/DESIGN.md section 14): what `fedgw replica add` puts into
//! the bundle for the new replica and what `fedgw replica join` takes out of it. The bundle is a
//! [`crate::backup`] archive (Argon2id + ChaCha20-Poly1305 under a passphrase) holding
//! [`BUNDLE_FILES`] only, never the root key or a gateway leaf (the new replica issues its own
//! leaf from the org CA at its first start), and an empty store (it fills from its siblings and
//! peers as a rebuilt store does). Pure: the CLI reads and writes the files.

use crate::config::{Config, MAX_REPLICAS, PeerConfig};
use crate::membership::GatewayId;

/// The data-dir files a replica bundle holds, and whether each is secret (written 0600).
pub const BUNDLE_FILES: [(&str, bool); 5] = [
    ("fedgw.toml", false),
    ("root-ca.pem", false),
    ("org-ca.pem", false),
    ("org-ca.key", true),
    ("genesis.json", false),
];

/// Why a replica cannot be added or a bundle not joined.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The name is not a DNS label.
    #[error("replica name: {0}")]
    Name(#[from] fedgw_certs::names::NameError),
    /// A replica of this site already has the name.
    #[error("the site already has a replica named {0:?}")]
    Taken(String),
    /// Every index 1 to 15 is in use.
    #[error("the site already has {MAX_REPLICAS} gateways, the most it can have")]
    Full,
    /// The bundle lacks a file or holds one a bundle never holds.
    #[error("not a replica bundle: {0}")]
    NotABundle(String),
    /// The configuration made for the new replica does not validate.
    #[error("the new replica's configuration: {0}")]
    Config(String),
}

/// The lowest index in 1..16 not in `used`.
pub fn next_index(used: impl IntoIterator<Item = u8>) -> Result<u8, ReplicaError> {
    let used: std::collections::BTreeSet<u8> = used.into_iter().collect();
    (1..MAX_REPLICAS)
        .find(|i| !used.contains(i))
        .ok_or(ReplicaError::Full)
}

/// A replica of this site known to the adder: its id, index and endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownReplica {
    /// Its id (this site's org and site).
    pub id: GatewayId,
    /// Its index.
    pub index: u8,
    /// Its advertised endpoints.
    pub advertise: Vec<String>,
}

/// The `fedgw.toml` of a new replica `name` of `me`'s site advertising `advertise`: `me`'s
/// consortium settings with the replica name and the lowest unused index, not the root holder,
/// and as bootstrap peers its siblings (`replicas`, `me` among them) and the other sites'
/// gateways (`others`). Errors: a bad or taken name, no index left.
pub fn new_replica_config(
    me: &Config,
    name: &str,
    advertise: Vec<String>,
    replicas: &[KnownReplica],
    others: &[PeerConfig],
) -> Result<Config, ReplicaError> {
    fedgw_certs::names::validate_label("replica", name)?;
    if replicas.iter().any(|r| r.id.replica == name) {
        return Err(ReplicaError::Taken(name.to_owned()));
    }
    let index = next_index(replicas.iter().map(|r| r.index))?;
    let mut config = me.clone();
    config.replica = name.to_owned();
    config.replica_index = index;
    config.advertise = advertise;
    config.root_holder = false;
    let mut peers: Vec<PeerConfig> = replicas
        .iter()
        .map(|r| PeerConfig {
            org: r.id.org.clone(),
            site: r.id.site.clone(),
            replica: r.id.replica.clone(),
            advertise: r.advertise.clone(),
        })
        .collect();
    for p in others {
        if !p.id().same_site(&me.gateway_id()) && !peers.iter().any(|q| q.id() == p.id()) {
            peers.push(p.clone());
        }
    }
    peers.sort_by_key(PeerConfig::id);
    config.peers = peers;
    config.validate().map_err(ReplicaError::Config)?;
    Ok(config)
}

/// Checks that `files` (name → bytes, from an opened bundle) are a replica bundle: the files of
/// [`BUNDLE_FILES`] only, with a `fedgw.toml` naming a replica; returns that config.
pub fn check_bundle(
    files: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Result<Config, ReplicaError> {
    if let Some(other) = files
        .keys()
        .find(|f| !BUNDLE_FILES.iter().any(|(name, _)| name == f))
    {
        return Err(ReplicaError::NotABundle(format!(
            "it holds {other} (a backup? restore it with fedgw restore)"
        )));
    }
    for need in ["fedgw.toml", "root-ca.pem", "org-ca.pem", "org-ca.key"] {
        if !files.contains_key(need) {
            return Err(ReplicaError::NotABundle(format!("it lacks {need}")));
        }
    }
    let text = std::str::from_utf8(&files["fedgw.toml"])
        .map_err(|_| ReplicaError::NotABundle("its fedgw.toml is not UTF-8".into()))?;
    let config = Config::parse(text, std::path::Path::new("fedgw.toml"))
        .map_err(|e| ReplicaError::NotABundle(e.to_string()))?;
    if config.replica.is_empty() || config.root_holder {
        return Err(ReplicaError::NotABundle(
            "its fedgw.toml names no replica".into(),
        ));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Config {
        let text = r#"
consortium = "acme"
domain = "acme.example"
org = "org1"
site = "dc1"
advertise = ["10.0.0.1:7443"]
listen = "0.0.0.0:7443"
dns = "127.0.0.1:5353"
metrics = "127.0.0.1:9464"
admission = "operator"
root_holder = true
"#;
        Config::parse(text, std::path::Path::new("fedgw.toml")).expect("config")
    }

    fn known(replica: &str, index: u8) -> KnownReplica {
        KnownReplica {
            id: GatewayId::replica("org1", "dc1", replica),
            index,
            advertise: vec![format!("{replica}.example:7443")],
        }
    }

    #[test]
    fn the_lowest_unused_index_is_taken_and_sixteen_is_the_most() {
        assert_eq!(next_index([0]).expect("free"), 1);
        assert_eq!(next_index([0, 1, 3]).expect("free"), 2);
        assert!(matches!(next_index(0..16), Err(ReplicaError::Full)));
    }

    #[test]
    fn a_new_replica_config_names_the_replica_and_its_siblings_as_peers() {
        let others = vec![PeerConfig {
            org: "org2".into(),
            site: "dc1".into(),
            replica: String::new(),
            advertise: vec!["10.0.1.1:7443".into()],
        }];
        let replicas = [known("", 0), known("r2", 1)];
        let c = new_replica_config(
            &me(),
            "r3",
            vec!["10.0.0.3:7443".into()],
            &replicas,
            &others,
        )
        .expect("config");
        assert_eq!((c.replica.as_str(), c.replica_index), ("r3", 2));
        assert!(!c.root_holder);
        assert_eq!(c.advertise, ["10.0.0.3:7443"]);
        let peers: Vec<String> = c.peers.iter().map(|p| p.id().to_string()).collect();
        assert_eq!(peers, ["org1/dc1", "org1/dc1/r2", "org2/dc1"]);
        assert!(matches!(
            new_replica_config(&me(), "r2", vec!["x:1".into()], &replicas, &others),
            Err(ReplicaError::Taken(_))
        ));
        assert!(matches!(
            new_replica_config(&me(), "R2", vec!["x:1".into()], &replicas, &others),
            Err(ReplicaError::Name(_))
        ));
    }

    #[test]
    fn a_bundle_holds_no_root_key_or_leaf_and_names_a_replica() {
        let config = new_replica_config(&me(), "r2", vec!["x:1".into()], &[known("", 0)], &[])
            .expect("config");
        let mut files: std::collections::BTreeMap<String, Vec<u8>> = [
            ("fedgw.toml", config.to_toml().into_bytes()),
            ("root-ca.pem", b"x".to_vec()),
            ("org-ca.pem", b"x".to_vec()),
            ("org-ca.key", b"x".to_vec()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(check_bundle(&files).expect("bundle").replica, "r2");
        files.insert("root-ca.key".into(), b"x".to_vec());
        assert!(check_bundle(&files).is_err());
        files.remove("root-ca.key");
        files.insert("fedgw.toml".into(), me().to_toml().into_bytes());
        assert!(
            check_bundle(&files).is_err(),
            "the first gateway's own config"
        );
    }
}
