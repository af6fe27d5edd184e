//! The identities every fedgw table is keyed by, parsed and checked once where they enter:
//! [`GatewayId`] (`org/site`, or `org/site/replica` for a site's further gateways) and
//! [`NodeKey`] (`org/node`). Both print with [`std::fmt::Display`] and parse back with
//! [`std::str::FromStr`], which refuses anything but consortium labels
//! ([`crate::names::validate_label`]) joined by `/`.

use crate::names::{NameError, validate_label};

/// Why an `a/b` identity did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The text has no `/` (expected `org/site` or `org/node`).
    #[error("{text:?}: expected {shape}")]
    Shape {
        /// The offending text (truncated to 80 characters).
        text: String,
        /// The expected shape, e.g. `ORG/SITE`.
        shape: &'static str,
    },
    /// One half is not a consortium label.
    #[error(transparent)]
    Label(#[from] NameError),
}

fn halves<'a>(
    text: &'a str,
    shape: &'static str,
    second: &'static str,
) -> Result<(&'a str, &'a str), IdError> {
    let (a, b) = text.split_once('/').ok_or_else(|| IdError::Shape {
        text: text.chars().take(80).collect(),
        shape,
    })?;
    validate_label("org", a)?;
    validate_label(second, b)?;
    Ok((a, b))
}

/// A gateway's identity in the federation: `org/site` for a site's first gateway,
/// `org/site/replica` for another replica of the same site. Every replica's certificate names
/// the site as `gw-<site>.<org>.<domain>` ([`GatewayId::server_name`]); the replica is read from
/// its SPIFFE ID ([`GatewayId::from_identity`]). Ordered by org, site, then replica (the first
/// gateway, empty replica, first).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GatewayId {
    /// The org.
    pub org: String,
    /// The site.
    pub site: String,
    /// The replica name within the site (a DNS label); empty for the site's first gateway.
    pub replica: String,
}

impl std::fmt::Display for GatewayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.org, self.site)?;
        if !self.replica.is_empty() {
            write!(f, "/{}", self.replica)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for GatewayId {
    type Err = IdError;

    /// Parses `org/site` or `org/site/replica`; every part must be a consortium label.
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (org_site, replica) = match s.match_indices('/').nth(1) {
            Some((i, _)) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        let (org, site) = halves(org_site, "ORG/SITE[/REPLICA]", "site")?;
        if let Some(replica) = replica {
            validate_label("replica", replica)?;
        }
        Ok(Self::replica(org, site, replica.unwrap_or_default()))
    }
}

impl GatewayId {
    /// The first gateway of `site` at `org` (empty replica), taken as given.
    pub fn new(org: impl Into<String>, site: impl Into<String>) -> Self {
        Self::replica(org, site, "")
    }

    /// Replica `replica` of `site` at `org` (empty: the first gateway), taken as given.
    pub fn replica(
        org: impl Into<String>,
        site: impl Into<String>,
        replica: impl Into<String>,
    ) -> Self {
        Self {
            org: org.into(),
            site: site.into(),
            replica: replica.into(),
        }
    }

    /// The site this gateway serves, as the id of its first gateway (replica empty): the key of
    /// everything replicas share (the site's records, its nodes, which side keeps a link up).
    pub fn site_id(&self) -> GatewayId {
        Self::new(self.org.clone(), self.site.clone())
    }

    /// Whether `other` serves the same site (same org and site, any replica).
    pub fn same_site(&self, other: &GatewayId) -> bool {
        self.org == other.org && self.site == other.site
    }

    /// Whether `other` is a sibling: another replica of the same site.
    pub fn is_sibling(&self, other: &GatewayId) -> bool {
        self.same_site(other) && self.replica != other.replica
    }

    /// Whether this is the site's first gateway (empty replica).
    pub fn is_first(&self) -> bool {
        self.replica.is_empty()
    }

    /// The name of this gateway's `Gateway` record: the site for the first gateway,
    /// `<site>.<replica>` for another replica (a dot never occurs in a site label, so the two
    /// never collide).
    pub fn record_name(&self) -> String {
        if self.replica.is_empty() {
            self.site.clone()
        } else {
            format!("{}.{}", self.site, self.replica)
        }
    }

    /// The gateway a `Gateway` record of `org` named `name` describes ([`Self::record_name`]);
    /// `None` unless `name` is one label or two labels joined by one dot.
    pub fn from_record_name(org: &str, name: &str) -> Option<Self> {
        let (site, replica) = name.split_once('.').unwrap_or((name, ""));
        validate_label("site", site).ok()?;
        if name.contains('.') {
            validate_label("replica", replica).ok()?;
        }
        Some(Self::replica(org, site, replica))
    }

    /// The TLS server name every dial to this gateway verifies, whatever host name or address
    /// it dials: `gw-<site>.<org>.<domain>`, the one DNS name its leaf carries (the same for every
    /// replica of the site). The address a gateway is dialled at and the identity it must prove
    /// are separate, as in Consul's cluster peering (the server name comes from the peering data,
    /// not the dial address).
    pub fn server_name(&self, domain: &str) -> String {
        crate::names::gateway_dns_name(&self.site, &self.org, domain)
    }

    /// The SPIFFE ID this gateway's leaf carries
    /// ([`crate::names::replica_spiffe_id`]).
    pub fn spiffe_id(&self, domain: &str) -> String {
        crate::names::replica_spiffe_id(&self.site, &self.replica, &self.org, domain)
    }

    /// Reads the gateway id from a verified identity whose DNS name is
    /// `gw-<site>.<org>.<domain>`: the replica from its SPIFFE ID
    /// (`.../gw/<site>/replica/<replica>`; `.../gw/<site>` or none: the first gateway). `None`
    /// when the SPIFFE ID names another site or has another shape.
    pub fn from_identity(id: &crate::PeerIdentity, domain: &str) -> Option<Self> {
        let suffix = format!(".{}.{domain}", id.org);
        let site = id.dns_name.strip_suffix(&suffix)?.strip_prefix("gw-")?;
        validate_label("site", site).ok()?;
        let replica = match &id.spiffe_id {
            None => "",
            Some(uri) => {
                let (spiffe_site, replica) =
                    crate::names::gateway_of_spiffe_id(uri, &id.org, domain)?;
                if spiffe_site != site {
                    return None;
                }
                replica
            }
        };
        Some(Self::replica(id.org.clone(), site, replica))
    }
}

/// A node's key in the consortium: `org/node`, unique across the consortium (a node's DNS
/// name is `<node>.<org>.<domain>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    /// The org that registered the node.
    pub org: String,
    /// The node's name within its org.
    pub name: String,
}

impl NodeKey {
    /// The key of `name` at `org`, taken as given (both already checked, e.g. read from a
    /// verified record).
    pub fn new(org: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            org: org.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.org, self.name)
    }
}

impl std::str::FromStr for NodeKey {
    type Err = IdError;

    /// Parses `org/node`; both halves must be consortium labels.
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (org, name) = halves(s, "ORG/NODE", "node")?;
        Ok(Self::new(org, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(dns: &str, spiffe: Option<&str>) -> crate::PeerIdentity {
        crate::PeerIdentity {
            org: "org2".into(),
            dns_name: dns.into(),
            spiffe_id: spiffe.map(Into::into),
        }
    }

    #[test]
    fn gateway_id_from_identity_reads_the_replica_from_the_spiffe_id() {
        let d = "acme.example";
        let dns = "gw-dc1.org2.acme.example";
        assert_eq!(
            GatewayId::from_identity(&identity(dns, None), d),
            Some(GatewayId::new("org2", "dc1"))
        );
        let first = GatewayId::new("org2", "dc1");
        assert_eq!(
            GatewayId::from_identity(&identity(dns, Some(&first.spiffe_id(d))), d),
            Some(first)
        );
        let r2 = GatewayId::replica("org2", "dc1", "r2");
        assert_eq!(
            GatewayId::from_identity(&identity(dns, Some(&r2.spiffe_id(d))), d),
            Some(r2)
        );
        let other_site = GatewayId::replica("org2", "dc9", "r2").spiffe_id(d);
        assert_eq!(
            GatewayId::from_identity(&identity(dns, Some(&other_site)), d),
            None
        );
    }

    #[test]
    fn ids_print_and_parse_back() {
        let g: GatewayId = "org1/eu-west".parse().expect("two labels");
        assert_eq!((g.org.as_str(), g.site.as_str()), ("org1", "eu-west"));
        assert_eq!(g.to_string(), "org1/eu-west");
        assert!(g.is_first());
        let r: GatewayId = "org1/eu-west/r2".parse().expect("three labels");
        assert_eq!(r, GatewayId::replica("org1", "eu-west", "r2"));
        assert_eq!(r.to_string(), "org1/eu-west/r2");
        assert!(r.is_sibling(&g) && r.same_site(&g) && !r.is_sibling(&r));
        assert_eq!(r.site_id(), g);
        assert!(g < r, "the first gateway sorts before its replicas");
        assert_eq!(
            (g.record_name(), r.record_name()),
            ("eu-west".into(), "eu-west.r2".into())
        );
        assert_eq!(GatewayId::from_record_name("org1", "eu-west"), Some(g));
        assert_eq!(GatewayId::from_record_name("org1", "eu-west.r2"), Some(r));
        for bad in ["", "a.", ".a", "a.b.c", "A"] {
            assert_eq!(GatewayId::from_record_name("org1", bad), None, "{bad:?}");
        }
        let n: NodeKey = "org2/node1".parse().expect("two labels");
        assert_eq!(n, NodeKey::new("org2", "node1"));
        assert_eq!(n.to_string(), "org2/node1");
    }

    #[test]
    fn anything_but_two_labels_is_refused_with_what_was_expected() {
        for bad in [
            "org1",
            "",
            "/site",
            "org1/",
            "Org1/site",
            "org1/site/",
            "org1/site/x/y",
            "org1/site/X",
            "org1/a b",
        ] {
            let err = bad.parse::<GatewayId>().expect_err(bad);
            assert!(!err.to_string().is_empty(), "{bad:?}");
        }
        assert_eq!(
            "org1".parse::<NodeKey>().expect_err("no slash").to_string(),
            "\"org1\": expected ORG/NODE"
        );
        assert!(matches!(
            "org1/No".parse::<NodeKey>(),
            Err(IdError::Label(NameError { what: "node", .. }))
        ));
    }
}
