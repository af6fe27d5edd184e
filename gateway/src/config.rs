//! `DIR/fedgw.toml`: the gateway's configuration, written by `fedgw init` / `fedgw join`.
//!
//! Unknown keys are errors (`deny_unknown_fields`), so a typo never silently falls back to a
//! default. Example:
//!
//! ```toml
//! consortium = "acme"
//! domain = "acme.example"
//! org = "org1"
//! site = "dc1"
//! advertise = ["gw.org1.example.com:7443"]
//! listen = "0.0.0.0:7443"
//! dns = "127.0.0.1:5353"
//! metrics = "127.0.0.1:9464"
//! admission = "operator"
//! leaf_lifetime_secs = 86400
//! root_holder = true
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default gateway port (TCP, later also UDP for QUIC).
pub const DEFAULT_GATEWAY_PORT: u16 = 7443;
/// Default DNS listen address.
pub const DEFAULT_DNS: &str = "127.0.0.1:5353";
/// Default metrics and health listen address.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";
/// How many gateways a site may have: replica indexes are 0 to 15 (sequence numbers are
/// spread over them modulo this).
pub const MAX_REPLICAS: u8 = 16;

fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// Default gateway leaf lifetime: 24 h.
pub const DEFAULT_LEAF_LIFETIME_SECS: u64 = 24 * 3600;

/// Who must approve a join (docs/DESIGN.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Admission {
    /// The operator's invite suffices.
    Operator,
    /// The invite plus approvals from a majority of member orgs.
    Majority,
    /// The invite plus approvals from every member org.
    All,
}

/// The consensus of the consortium's chain, declared at `fedgw init` and handed to every joiner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Consensus {
    /// None declared: fedgw changes no chain membership.
    #[default]
    None,
    /// GoQuorum raft.
    Raft,
    /// QBFT (GoQuorum, Besu).
    Qbft,
    /// IBFT (GoQuorum istanbul, Besu IBFT 2.0).
    Ibft,
    /// Clique proof of authority.
    Clique,
}

impl Consensus {
    /// The wire form.
    pub fn to_pb(self) -> fedgw_proto::v1::Consensus {
        use fedgw_proto::v1::Consensus as P;
        match self {
            Consensus::None => P::Unspecified,
            Consensus::Raft => P::Raft,
            Consensus::Qbft => P::Qbft,
            Consensus::Ibft => P::Ibft,
            Consensus::Clique => P::Clique,
        }
    }

    /// From the wire; unknown values (a newer founder) read as none.
    pub fn from_pb(v: i32) -> Self {
        use fedgw_proto::v1::Consensus as P;
        match P::try_from(v) {
            Ok(P::Raft) => Consensus::Raft,
            Ok(P::Qbft) => Consensus::Qbft,
            Ok(P::Ibft) => Consensus::Ibft,
            Ok(P::Clique) => Consensus::Clique,
            Ok(P::Unspecified) | Err(_) => Consensus::None,
        }
    }

    /// The name as `--consensus` and `fedgw.toml` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Consensus::None => "none",
            Consensus::Raft => "raft",
            Consensus::Qbft => "qbft",
            Consensus::Ibft => "ibft",
            Consensus::Clique => "clique",
        }
    }
}

/// A bootstrap peer: another gateway this one may dial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's org.
    pub org: String,
    /// The peer's site.
    pub site: String,
    /// The peer's replica name within its site (empty or absent: the site's first gateway).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replica: String,
    /// `host:port` endpoints.
    pub advertise: Vec<String>,
}

impl PeerConfig {
    /// The peer's gateway id.
    pub fn id(&self) -> fedgw_certs::ids::GatewayId {
        fedgw_certs::ids::GatewayId::replica(
            self.org.clone(),
            self.site.clone(),
            self.replica.clone(),
        )
    }
}

/// The contents of `fedgw.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Consortium name (DNS label).
    pub consortium: String,
    /// Consortium DNS domain.
    pub domain: String,
    /// This gateway's org.
    pub org: String,
    /// This gateway's site label.
    pub site: String,
    /// This gateway's replica name within the site (DNS label); empty or absent for the site's
    /// first gateway. Replicas of a site share its identity and records (docs/DESIGN.md section
    /// 14); `fedgw replica add` names them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replica: String,
    /// This replica's index within the site: 0 for the first gateway, 1 to 15 for the others
    /// (assigned by `fedgw replica add`). Every record this gateway publishes has a sequence
    /// number congruent to it modulo 16, so two replicas never sign the same sequence number
    /// for one record.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replica_index: u8,
    /// Endpoints other gateways dial, `host:port`. Port 0 means "the port bound at run time"
    /// (single-host labs and tests).
    pub advertise: Vec<String>,
    /// Gateway port listen address.
    pub listen: SocketAddr,
    /// DNS listen address.
    pub dns: SocketAddr,
    /// Metrics and health listen address.
    pub metrics: SocketAddr,
    /// Admission policy of the consortium.
    pub admission: Admission,
    /// The chain's consensus (older files without it: none).
    #[serde(default)]
    pub consensus: Consensus,
    /// Gateway leaf lifetime in seconds; the leaf is renewed at half-life.
    #[serde(default = "default_leaf_lifetime")]
    pub leaf_lifetime_secs: u64,
    /// Whether this data dir holds the consortium root key (the founder).
    #[serde(default)]
    pub root_holder: bool,
    /// SHA-256 (hex) of `genesis.json`, when the consortium has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genesis_sha256: Option<String>,
    /// This org's Fabric MSP ID as chosen at `init`/`join` (`--msp-id`), carried in its
    /// root-signed member record; absent: `<Org>MSP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric_msp_id: Option<String>,
    /// This site accepts no inbound connections (behind NAT): it dials every other gateway and
    /// its streams are used both ways.
    #[serde(default)]
    pub outbound_only: bool,
    /// Membership sync tuning.
    #[serde(default)]
    pub sync: SyncConfig,
    /// How remote nodes get local addresses at this site.
    #[serde(default)]
    pub addresses: crate::addressing::AddressMode,
    /// DNS queries per second allowed from one source address (burst of the same size); 0
    /// turns the limit off. In Kubernetes every query comes from CoreDNS: size it for that.
    #[serde(default = "default_dns_rate_limit")]
    pub dns_rate_limit_qps: u32,
    /// DNS TCP connections one source (an IPv4 address, an IPv6 /64) may hold open at once;
    /// more are closed on accept. 1 to `dns_tcp_max_connections`.
    #[serde(default = "default_dns_tcp_per_source")]
    pub dns_tcp_max_per_source: usize,
    /// DNS TCP connections open at once in total; more are closed on accept. 1 to
    /// [`MAX_DNS_TCP_CONNECTIONS`].
    #[serde(default = "default_dns_tcp_total")]
    pub dns_tcp_max_connections: usize,
    /// Gateways to dial at start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerConfig>,
    /// Data-plane tunnels (`[tunnel]`: transport, loopback targets, connection limit).
    #[serde(default)]
    pub tunnel: crate::tunnel::TunnelConfig,
    /// What unauthenticated connections to the gateway port may hold (`[port]`: pending
    /// handshakes and join connections, in total and per source).
    #[serde(default)]
    pub port: crate::listener::PortLimits,
    /// Live peering of this site's chain nodes (`[peering]`: reconcile interval).
    #[serde(default, skip_serializing_if = "PeeringConfig::is_default")]
    pub peering: PeeringConfig,
    /// The operator's read-only web console (`[console]`: own address, bearer token file).
    #[serde(
        default,
        skip_serializing_if = "crate::console::ConsoleConfig::is_default"
    )]
    pub console: crate::console::ConsoleConfig,
    /// Federation policy (`[federation]`: certificate transparency).
    #[serde(default, skip_serializing_if = "FederationConfig::is_default")]
    pub federation: FederationConfig,
}

/// `[federation]`: what this gateway asks of peer gateways.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Refuse a peer gateway leaf this many seconds after its notBefore when no cert record of
    /// its org names it; 0 turns the check off [default 0: gateways before cert records publish
    /// none, so turn it on once every member runs a version that publishes them].
    pub require_issued_certs_after_s: u64,
}

impl FederationConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The grace period (zero: off).
    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.require_issued_certs_after_s)
    }
}

/// `[peering]`: live peering of this site's chain nodes with the other orgs' nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeeringConfig {
    /// How often each node's RPC endpoint is reconciled (`admin_peers` read, missing peers
    /// added again), ms; 100 to 86 400 000 [default 60 000].
    pub reconcile_ms: u64,
}

impl Default for PeeringConfig {
    fn default() -> Self {
        Self {
            reconcile_ms: 60_000,
        }
    }
}

impl PeeringConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The reconcile interval, clamped to 100 ms .. 1 day.
    pub fn reconcile(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.reconcile_ms.clamp(100, 86_400_000))
    }
}

/// `[sync]`: membership sync tuning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Heartbeat interval on sync streams, ms; a stream silent for three intervals is dropped.
    pub heartbeat_ms: u64,
    /// First reconnect delay, ms (doubles per failure, ±25 % jitter).
    pub backoff_base_ms: u64,
    /// Longest reconnect delay, ms.
    pub backoff_max_ms: u64,
    /// Gateways (`org/site`) never linked with directly; their records still arrive by relay.
    pub deny: Vec<String>,
    /// Longest life of a sync session, ms [default and maximum: half the leaf lifetime].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_session_ms: Option<u64>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: 1000,
            backoff_base_ms: 100,
            backoff_max_ms: 10_000,
            deny: vec![],
            max_session_ms: None,
        }
    }
}

fn default_dns_rate_limit() -> u32 {
    10_000
}

/// Default `dns_tcp_max_per_source`.
pub const DEFAULT_DNS_TCP_PER_SOURCE: usize = 16;
/// Default `dns_tcp_max_connections`.
pub const DEFAULT_DNS_TCP_CONNECTIONS: usize = 256;

fn default_dns_tcp_per_source() -> usize {
    DEFAULT_DNS_TCP_PER_SOURCE
}

fn default_dns_tcp_total() -> usize {
    DEFAULT_DNS_TCP_CONNECTIONS
}

/// Largest `dns_tcp_max_connections`: each connection is a task and a descriptor.
pub const MAX_DNS_TCP_CONNECTIONS: usize = 65_536;

/// Longest gateway leaf lifetime, s (366 days): gateway leaves are short-lived by design, and
/// every deadline derived from the lifetime stays far from overflowing.
pub const MAX_LEAF_LIFETIME_SECS: u64 = 366 * 24 * 3600;

/// Largest `tunnel.max_connections`: each connection is a task and two sockets, so a typo such
/// as 100000000 is refused rather than accepted as no limit at all.
pub const MAX_TUNNEL_CONNECTIONS: usize = 1 << 20;

/// Largest `tunnel.stall_timeout_ms` (an hour): a reader that took nothing for that long is
/// gone, whatever the node.
pub const MAX_STALL_TIMEOUT_MS: u64 = 3_600_000;

fn default_leaf_lifetime() -> u64 {
    DEFAULT_LEAF_LIFETIME_SECS
}

/// Errors reading or validating `fedgw.toml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The config path.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys included).
    #[error("invalid {path}")]
    Parse {
        /// The config path.
        path: PathBuf,
        /// The TOML error, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid {path}: {reason}")]
    Invalid {
        /// The config path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Config {
    /// Parses and validates a config text. `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate().map_err(|reason| ConfigError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
        Ok(config)
    }

    /// This gateway's identity: org, site and replica (empty for the site's first gateway).
    pub fn gateway_id(&self) -> fedgw_certs::ids::GatewayId {
        fedgw_certs::ids::GatewayId::replica(
            self.org.clone(),
            self.site.clone(),
            self.replica.clone(),
        )
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks names, endpoints and ranges.
    pub fn validate(&self) -> Result<(), String> {
        use fedgw_certs::names;
        names::validate_label("consortium", &self.consortium).map_err(|e| e.to_string())?;
        names::validate_domain("domain", &self.domain).map_err(|e| e.to_string())?;
        names::validate_label("org", &self.org).map_err(|e| e.to_string())?;
        names::validate_label("site", &self.site).map_err(|e| e.to_string())?;
        if !self.replica.is_empty() {
            names::validate_label("replica", &self.replica).map_err(|e| e.to_string())?;
        }
        if self.replica.is_empty() != (self.replica_index == 0) {
            return Err(
                "replica and replica_index go together: both absent for the site's first \
                 gateway, both set (index 1 to 15) for another replica"
                    .into(),
            );
        }
        if self.replica_index >= MAX_REPLICAS {
            return Err(format!("replica_index must be below {MAX_REPLICAS}"));
        }
        if self.advertise.is_empty() {
            return Err("advertise must list at least one host:port".into());
        }
        for a in &self.advertise {
            validate_advertise(a)?;
        }
        if !(60..=MAX_LEAF_LIFETIME_SECS).contains(&self.leaf_lifetime_secs) {
            return Err(format!(
                "leaf_lifetime_secs must be between 60 and {MAX_LEAF_LIFETIME_SECS} (366 days)"
            ));
        }
        if !(10..=60_000).contains(&self.sync.heartbeat_ms) {
            return Err("sync.heartbeat_ms must be between 10 and 60000".into());
        }
        if !(1..=MAX_DNS_TCP_CONNECTIONS).contains(&self.dns_tcp_max_connections) {
            return Err(format!(
                "dns_tcp_max_connections must be between 1 and {MAX_DNS_TCP_CONNECTIONS}"
            ));
        }
        if !(1..=self.dns_tcp_max_connections).contains(&self.dns_tcp_max_per_source) {
            return Err(
                "dns_tcp_max_per_source must be between 1 and dns_tcp_max_connections".into(),
            );
        }
        if self.sync.backoff_base_ms == 0 || self.sync.backoff_max_ms < self.sync.backoff_base_ms {
            return Err(
                "sync.backoff_base_ms must be positive and at most sync.backoff_max_ms".into(),
            );
        }
        for (key, ms) in [
            ("sync.max_session_ms", self.sync.max_session_ms),
            ("tunnel.max_link_ms", self.tunnel.max_link_ms),
        ] {
            if let Some(ms) = ms
                && (ms < 100 || ms > self.leaf_lifetime_secs * 500)
            {
                return Err(format!(
                    "{key} must be between 100 and half the leaf lifetime"
                ));
            }
        }
        if !(1..=MAX_TUNNEL_CONNECTIONS).contains(&self.tunnel.max_connections) {
            return Err(format!(
                "tunnel.max_connections must be between 1 and {MAX_TUNNEL_CONNECTIONS}"
            ));
        }
        let stall = self.tunnel.stall_timeout_ms;
        if stall != 0 && !(100..=MAX_STALL_TIMEOUT_MS).contains(&stall) {
            return Err(format!(
                "tunnel.stall_timeout_ms must be 0 (no limit) or between 100 and {MAX_STALL_TIMEOUT_MS}"
            ));
        }
        crate::tunnel::class::check(&self.tunnel.priority)?;
        if self.tunnel.connect_hold_ms > crate::tunnel::MAX_CONNECT_HOLD_MS {
            return Err(format!(
                "tunnel.connect_hold_ms must be at most {}",
                crate::tunnel::MAX_CONNECT_HOLD_MS
            ));
        }
        if let Some(n) = self.tunnel.max_connections_per_org
            && !(1..=self.tunnel.max_connections).contains(&n)
        {
            return Err(
                "tunnel.max_connections_per_org must be between 1 and tunnel.max_connections"
                    .into(),
            );
        }
        match &self.addresses {
            crate::addressing::AddressMode::Ip { pool, interface } => {
                crate::addressing::pool_range(pool).map_err(|e| format!("addresses: {e}"))?;
                if let Some(interface) = interface {
                    crate::alias::Aliases::new(pool, interface)
                        .map_err(|e| format!("addresses: {e}"))?;
                }
            }
            crate::addressing::AddressMode::Port {
                first_port,
                last_port,
                ..
            } => {
                if *first_port == 0 || first_port > last_port {
                    return Err(format!(
                        "addresses: {}",
                        crate::addressing::AddressError::PortRange(*first_port, *last_port)
                    ));
                }
            }
        }
        self.port.validate()?;
        for id in &self.sync.deny {
            if id.parse::<fedgw_certs::ids::GatewayId>().is_err() {
                return Err(format!("sync.deny entry {id:?} is not org/site"));
            }
        }
        Ok(())
    }

    /// Serialises to TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("Config serialises: plain strings, numbers and arrays")
    }

    /// The longest life of a sync session: `sync.max_session_ms`, or half the leaf lifetime.
    pub fn max_session_age(&self) -> std::time::Duration {
        self.half_leaf_lifetime_or(self.sync.max_session_ms)
    }

    /// The longest time a tunnel link takes new streams: `tunnel.max_link_ms`, or half the
    /// leaf lifetime (see [`crate::tunnel::link_age`]).
    pub fn max_link_age(&self) -> std::time::Duration {
        self.half_leaf_lifetime_or(self.tunnel.max_link_ms)
    }

    /// `ms` if set (validation keeps it at most half the leaf lifetime), else half the leaf
    /// lifetime: the age limit of anything authenticated by a leaf.
    fn half_leaf_lifetime_or(&self, ms: Option<u64>) -> std::time::Duration {
        match ms {
            Some(ms) => std::time::Duration::from_millis(ms),
            None => std::time::Duration::from_secs(self.leaf_lifetime_secs / 2),
        }
    }

    /// The advertised endpoints with port 0 replaced by `bound_port`.
    pub fn effective_advertise(&self, bound_port: u16) -> Vec<String> {
        self.advertise
            .iter()
            .map(|a| match a.rsplit_once(':') {
                Some((host, "0")) => format!("{host}:{bound_port}"),
                _ => a.clone(),
            })
            .collect()
    }
}

/// Checks an advertised endpoint: `host:port` as in a join token, or with port 0.
pub fn validate_advertise(endpoint: &str) -> Result<(), String> {
    let probe = match endpoint.rsplit_once(':') {
        Some((host, "0")) => format!("{host}:1"),
        _ => endpoint.to_owned(),
    };
    fedgw_certs::token::validate_endpoint(&probe)
        .map_err(|_| format!("invalid advertise endpoint {endpoint:?} (want host:port)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Config {
        Config {
            fabric_msp_id: None,
            consortium: "acme".into(),
            domain: "acme.example".into(),
            org: "org1".into(),
            site: "dc1".into(),
            replica: String::new(),
            replica_index: 0,
            advertise: vec!["127.0.0.1:0".into()],
            listen: "127.0.0.1:0".parse().expect("addr"),
            dns: DEFAULT_DNS.parse().expect("addr"),
            metrics: DEFAULT_METRICS.parse().expect("addr"),
            admission: Admission::Operator,
            consensus: Consensus::None,
            leaf_lifetime_secs: DEFAULT_LEAF_LIFETIME_SECS,
            root_holder: true,
            genesis_sha256: None,
            outbound_only: false,
            sync: SyncConfig::default(),
            addresses: Default::default(),
            tunnel: Default::default(),
            dns_rate_limit_qps: default_dns_rate_limit(),
            dns_tcp_max_per_source: default_dns_tcp_per_source(),
            dns_tcp_max_connections: default_dns_tcp_total(),
            port: Default::default(),
            peering: Default::default(),
            console: Default::default(),
            federation: Default::default(),
            peers: vec![],
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        assert_eq!(
            Config::parse(&c.to_toml(), Path::new("x")).expect("parses"),
            c
        );
        assert_eq!(
            c.effective_advertise(7443),
            vec!["127.0.0.1:7443".to_owned()]
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let text = sample().to_toml() + "\nlisten_port = 1\n";
        assert!(matches!(
            Config::parse(&text, Path::new("x")),
            Err(ConfigError::Parse { .. })
        ));
        let text = sample().to_toml().replace("org1", "Org1");
        assert!(matches!(
            Config::parse(&text, Path::new("x")),
            Err(ConfigError::Invalid { .. })
        ));
        let text = sample().to_toml().replace("127.0.0.1:0\"]", "nope\"]");
        assert!(matches!(
            Config::parse(&text, Path::new("x")),
            Err(ConfigError::Invalid { .. })
        ));
        let text = sample().to_toml().replace("operator", "anyone");
        assert!(matches!(
            Config::parse(&text, Path::new("x")),
            Err(ConfigError::Parse { .. })
        ));
        // priority classes: known classes by port name or org/node/port, nothing else
        let mut c = sample();
        c.tunnel
            .priority
            .insert("tessera".into(), crate::tunnel::class::Class::Bulk);
        c.tunnel.priority.insert(
            "org2/validator1/p2p".into(),
            crate::tunnel::class::Class::Consensus,
        );
        c.tunnel.congestion = crate::tunnel::quic::Congestion::Cubic;
        let back = Config::parse(&c.to_toml(), Path::new("x")).expect("valid");
        assert_eq!(back.tunnel, c.tunnel);
        c.tunnel
            .priority
            .insert("org2/p2p".into(), crate::tunnel::class::Class::Bulk);
        assert!(matches!(
            Config::parse(&c.to_toml(), Path::new("x")),
            Err(ConfigError::Invalid { .. })
        ));
        let text = sample()
            .to_toml()
            .replace("congestion = \"bbr\"", "congestion = \"reno\"");
        assert!(matches!(
            Config::parse(&text, Path::new("x")),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn consensus_defaults_to_none_and_round_trips_on_the_wire() {
        let c = sample();
        let text: String = c
            .to_toml()
            .lines()
            .filter(|l| !l.starts_with("consensus"))
            .map(|l| format!("{l}\n"))
            .collect();
        let loaded = Config::parse(&text, Path::new("x")).expect("older file");
        assert_eq!(loaded.consensus, Consensus::None);
        for k in [
            Consensus::None,
            Consensus::Raft,
            Consensus::Qbft,
            Consensus::Ibft,
            Consensus::Clique,
        ] {
            assert_eq!(Consensus::from_pb(k.to_pb().into()), k);
        }
        // a value from a newer founder reads as none
        assert_eq!(Consensus::from_pb(99), Consensus::None);
        let mut raft = sample();
        raft.consensus = Consensus::Raft;
        assert!(raft.to_toml().contains("consensus = \"raft\""));
    }

    #[test]
    fn dns_tcp_caps_default_to_16_per_source_and_256_in_total_and_are_bounded() {
        let mut c = sample();
        // an older file without the keys gets the defaults
        let text: String = c
            .to_toml()
            .lines()
            .filter(|l| !l.starts_with("dns_tcp_"))
            .map(|l| format!("{l}\n"))
            .collect();
        let loaded = Config::parse(&text, Path::new("x")).expect("defaults");
        assert_eq!(
            (
                loaded.dns_tcp_max_per_source,
                loaded.dns_tcp_max_connections
            ),
            (16, 256)
        );
        for (per_source, total, ok) in [
            (1, 1, true),
            (256, 256, true),
            (16, MAX_DNS_TCP_CONNECTIONS, true),
            (0, 256, false),
            (16, 0, false),
            (257, 256, false),
            (16, MAX_DNS_TCP_CONNECTIONS + 1, false),
        ] {
            c.dns_tcp_max_per_source = per_source;
            c.dns_tcp_max_connections = total;
            let r = Config::parse(&c.to_toml(), Path::new("x"));
            assert_eq!(r.is_ok(), ok, "{per_source}/{total}: {r:?}");
            if let Err(e) = r {
                assert!(
                    matches!(&e, ConfigError::Invalid { reason, .. } if reason.contains("dns_tcp_max")),
                    "{e:?}"
                );
            }
        }
    }

    #[test]
    fn tunnel_link_age_defaults_to_half_the_leaf_lifetime_and_may_only_shorten_it() {
        let mut c = sample();
        c.leaf_lifetime_secs = 3600;
        assert_eq!(c.max_link_age(), std::time::Duration::from_secs(1800));
        c.tunnel.max_link_ms = Some(60_000);
        assert_eq!(c.max_link_age(), std::time::Duration::from_secs(60));
        assert_eq!(
            Config::parse(&c.to_toml(), Path::new("x")).expect("parses"),
            c
        );
        let mut long = sample();
        long.leaf_lifetime_secs = MAX_LEAF_LIFETIME_SECS + 1;
        let err = Config::parse(&long.to_toml(), Path::new("x")).expect_err("too long");
        assert!(err.to_string().contains("leaf_lifetime_secs"), "{err}");
        for bad in [99, 1_800_001] {
            c.tunnel.max_link_ms = Some(bad);
            let err = Config::parse(&c.to_toml(), Path::new("x")).expect_err("out of range");
            assert!(
                err.to_string().contains("tunnel.max_link_ms"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn tunnel_connection_limits_are_bounded() {
        let mut c = sample();
        c.tunnel.max_connections_per_org = Some(100);
        assert_eq!(
            Config::parse(&c.to_toml(), Path::new("x")).expect("parses"),
            c
        );
        for (total, per_org, key) in [
            (0, None, "tunnel.max_connections "),
            (MAX_TUNNEL_CONNECTIONS + 1, None, "tunnel.max_connections "),
            // more than a semaphore holds: a clear error, not a panic at start
            (1 << 62, None, "tunnel.max_connections "),
            (100, Some(0), "tunnel.max_connections_per_org"),
            (100, Some(101), "tunnel.max_connections_per_org"),
        ] {
            c.tunnel.max_connections = total;
            c.tunnel.max_connections_per_org = per_org;
            let err = Config::parse(&c.to_toml(), Path::new("x")).expect_err("out of range");
            assert!(err.to_string().contains(key), "{total} {per_org:?}: {err}");
        }
    }

    #[test]
    fn an_invalid_address_pool_or_port_range_is_an_error_at_load() {
        use crate::addressing::AddressMode;
        let mut c = sample();
        for ok in ["10.0.0.0/8", "127.77.0.0/16", "10.1.2.0/30"] {
            c.addresses = AddressMode::Ip {
                pool: ok.into(),
                interface: None,
            };
            Config::parse(&c.to_toml(), Path::new("x")).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/31",
            "10.0.0.0/7",
            "10.0.0.0",
            "10.0.0/16",
            "fd00::/64",
            "",
        ] {
            c.addresses = AddressMode::Ip {
                pool: bad.into(),
                interface: None,
            };
            let err = Config::parse(&c.to_toml(), Path::new("x")).expect_err(bad);
            assert!(
                matches!(&err, ConfigError::Invalid { reason, .. } if reason.contains("address pool")),
                "{bad}: {err}"
            );
        }
        for (first, last, ok) in [(40000, 40010, true), (5, 4, false), (0, 10, false)] {
            c.addresses = AddressMode::Port {
                ip: "127.0.0.1".parse().expect("ip"),
                first_port: first,
                last_port: last,
            };
            let parsed = Config::parse(&c.to_toml(), Path::new("x"));
            assert_eq!(parsed.is_ok(), ok, "{first}-{last}: {parsed:?}");
        }
    }

    #[test]
    fn the_stall_timeout_defaults_to_thirty_seconds_and_zero_turns_it_off() {
        let mut c = sample();
        assert_eq!(
            c.tunnel.stall_timeout(),
            Some(std::time::Duration::from_secs(30))
        );
        for ok in [0, 100, MAX_STALL_TIMEOUT_MS] {
            c.tunnel.stall_timeout_ms = ok;
            let parsed = Config::parse(&c.to_toml(), Path::new("x")).expect("in range");
            assert_eq!(parsed.tunnel.stall_timeout_ms, ok);
        }
        c.tunnel.stall_timeout_ms = 0;
        assert_eq!(c.tunnel.stall_timeout(), None);
        for bad in [1, 99, MAX_STALL_TIMEOUT_MS + 1] {
            c.tunnel.stall_timeout_ms = bad;
            let err = Config::parse(&c.to_toml(), Path::new("x")).expect_err("out of range");
            assert!(
                err.to_string().contains("tunnel.stall_timeout_ms"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_connect_hold_defaults_to_five_seconds_and_is_bounded() {
        let mut c = sample();
        assert_eq!(c.tunnel.connect_hold(), std::time::Duration::from_secs(5));
        for ok in [0, crate::tunnel::MAX_CONNECT_HOLD_MS] {
            c.tunnel.connect_hold_ms = ok;
            let parsed = Config::parse(&c.to_toml(), Path::new("x")).expect("in range");
            assert_eq!(parsed.tunnel.connect_hold_ms, ok);
        }
        c.tunnel.connect_hold_ms = crate::tunnel::MAX_CONNECT_HOLD_MS + 1;
        let err = Config::parse(&c.to_toml(), Path::new("x")).expect_err("out of range");
        assert!(err.to_string().contains("tunnel.connect_hold_ms"), "{err}");
    }

    /// Maps whose keys the operator chooses: one row in docs/CONFIG.md, not one per key.
    const FREE_FORM: &[&str] = &["tunnel.priority"];

    /// Every key path under `table` (`sync.heartbeat_ms`, `peers.org`, `addresses.pool`).
    fn key_paths(prefix: &str, table: &toml::Table, out: &mut std::collections::BTreeSet<String>) {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) if !FREE_FORM.contains(&path.as_str()) => {
                    key_paths(&path, t, out)
                }
                toml::Value::Array(items) if items.iter().any(toml::Value::is_table) => {
                    for t in items.iter().filter_map(toml::Value::as_table) {
                        key_paths(&path, t, out);
                    }
                }
                _ => {
                    out.insert(path);
                }
            }
        }
    }

    /// docs/CONFIG.md names every key of `fedgw.toml` and no other: the key paths of configs
    /// with every optional value set (both address modes) against the first cell of each
    /// table row of the doc.
    #[test]
    fn config_reference_lists_every_key_and_no_other() {
        let mut full = sample();
        full.genesis_sha256 = Some("00".repeat(32));
        full.sync.max_session_ms = Some(60_000);
        full.sync.deny = vec!["org3/dc1".into()];
        full.tunnel.max_connections_per_org = Some(8);
        full.tunnel.max_link_ms = Some(60_000);
        // a section left out of the TOML while it holds its defaults
        full.peering.reconcile_ms = 1_000;
        full.console = crate::console::ConsoleConfig {
            listen: Some("127.0.0.1:9100".parse().expect("address")),
            token_file: Some("console.token".into()),
            client_cert: true,
        };
        full.federation.require_issued_certs_after_s = 3_600;
        full.fabric_msp_id = Some("AcmeOrg1MSP".into());
        full.tunnel
            .priority
            .insert("tessera".into(), crate::tunnel::class::Class::Bulk);
        full.replica = "r2".into();
        full.replica_index = 1;
        full.peers = vec![PeerConfig {
            org: "org2".into(),
            site: "dc1".into(),
            replica: "r2".into(),
            advertise: vec!["127.0.0.1:7443".into()],
        }];
        full.addresses = crate::addressing::AddressMode::Ip {
            pool: "127.77.0.0/16".into(),
            interface: Some("auto".into()),
        };
        let mut port_mode = sample();
        port_mode.addresses = crate::addressing::AddressMode::Port {
            ip: "127.0.0.1".parse().expect("ip"),
            first_port: 20000,
            last_port: 20999,
        };
        let mut keys = std::collections::BTreeSet::new();
        for c in [full, port_mode] {
            let table: toml::Table = toml::from_str(&c.to_toml()).expect("own TOML parses");
            key_paths("", &table, &mut keys);
        }
        let doc = include_str!("../../docs/CONFIG.md");
        let documented: std::collections::BTreeSet<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`'))
            .map(|(key, _)| key.to_owned())
            .collect();
        let missing: Vec<_> = keys.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&keys).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "docs/CONFIG.md lacks {missing:?} and names keys fedgw.toml does not have: {unknown:?}"
        );
    }
}
