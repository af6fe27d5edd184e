//! The identities every fedgw table is keyed by, parsed and checked once where they enter:
//! [`GatewayId`] (`org/site`) and [`NodeKey`] (`org/node`). Both print as `a/b` with
//! [`std::fmt::Display`] and parse back with [`std::str::FromStr`], which refuses anything but two
//! consortium labels ([`crate::names::validate_label`]) joined by one `/`.

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

/// A gateway's identity in the federation: `org/site`. Its certificate names it as
/// `gw-<site>.<org>.<domain>` ([`GatewayId::server_name`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GatewayId {
    /// The org.
    pub org: String,
    /// The site.
    pub site: String,
}

impl std::fmt::Display for GatewayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.org, self.site)
    }
}

impl std::str::FromStr for GatewayId {
    type Err = IdError;

    /// Parses `org/site`; both halves must be consortium labels.
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (org, site) = halves(s, "ORG/SITE", "site")?;
        Ok(Self {
            org: org.to_owned(),
            site: site.to_owned(),
        })
    }
}

impl GatewayId {
    /// The TLS server name every dial to this gateway verifies, whatever host name or address
    /// it dials: `gw-<site>.<org>.<domain>`, the one DNS name its leaf carries. The address a
    /// gateway is dialled at and the identity it must prove are separate, as in Consul's
    /// cluster peering (the server name comes from the peering data, not the dial address).
    pub fn server_name(&self, domain: &str) -> String {
        crate::names::gateway_dns_name(&self.site, &self.org, domain)
    }

    /// Reads the gateway id from a verified identity whose DNS name is
    /// `gw-<site>.<org>.<domain>`.
    pub fn from_identity(id: &crate::PeerIdentity, domain: &str) -> Option<Self> {
        let suffix = format!(".{}.{domain}", id.org);
        let site = id.dns_name.strip_suffix(&suffix)?.strip_prefix("gw-")?;
        validate_label("site", site).ok()?;
        Some(Self {
            org: id.org.clone(),
            site: site.to_owned(),
        })
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

    #[test]
    fn ids_print_and_parse_back() {
        let g: GatewayId = "org1/eu-west".parse().expect("two labels");
        assert_eq!((g.org.as_str(), g.site.as_str()), ("org1", "eu-west"));
        assert_eq!(g.to_string(), "org1/eu-west");
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
            "org1/site/x",
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
