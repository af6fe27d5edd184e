//! Consortium naming: DNS labels for orgs and sites, the consortium domain, and the names a
//! certificate carries (`gw-<site>.<org>.<domain>`, `spiffe://<domain>/org/<org>/gw/<site>`).
//!
//! Names are canonical lowercase LDH labels (RFC 1035 section 2.3.1: letters, digits, hyphen;
//! no leading or trailing hyphen; 1 to 63 octets). Upper case is rejected rather than folded so
//! that one org has exactly one spelling everywhere a name is compared.

/// A name that is not a valid consortium label or domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {name:?}: {reason}")]
pub struct NameError {
    /// What the name was meant to be (`org`, `site`, `domain`, `DNS name`).
    pub what: &'static str,
    /// The offending name (truncated to 80 characters).
    pub name: String,
    /// Why it was refused.
    pub reason: &'static str,
}

impl NameError {
    fn new(what: &'static str, name: &str, reason: &'static str) -> Self {
        let name = name.chars().take(80).collect();
        Self { what, name, reason }
    }
}

/// Checks one DNS label: 1 to 63 characters of `[a-z0-9-]`, not starting or ending with `-`.
///
/// `what` names the label in the error (`org`, `site`, `node`).
pub fn validate_label(what: &'static str, label: &str) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::new(what, label, "empty"));
    }
    if label.len() > 63 {
        return Err(NameError::new(what, label, "longer than 63 characters"));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(NameError::new(
            what,
            label,
            "only lowercase letters, digits and '-' are allowed",
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::new(
            what,
            label,
            "must not start or end with '-'",
        ));
    }
    Ok(())
}

/// Checks a DNS name made of at least two labels (`acme.example`), at most 253 characters, no
/// trailing dot.
pub fn validate_domain(what: &'static str, domain: &str) -> Result<(), NameError> {
    if domain.len() > 253 {
        return Err(NameError::new(what, domain, "longer than 253 characters"));
    }
    let mut labels = 0;
    for label in domain.split('.') {
        validate_label(what, label).map_err(|e| NameError::new(what, domain, e.reason))?;
        labels += 1;
    }
    if labels < 2 {
        return Err(NameError::new(what, domain, "needs at least two labels"));
    }
    Ok(())
}

/// The DNS subtree an org owns: `<org>.<domain>` (the org CA's only permitted name constraint).
pub fn org_subtree(org: &str, domain: &str) -> String {
    format!("{org}.{domain}")
}

/// The DNS name of a site's gateway: `gw-<site>.<org>.<domain>`.
pub fn gateway_dns_name(site: &str, org: &str, domain: &str) -> String {
    format!("gw-{site}.{org}.{domain}")
}

/// The SPIFFE ID of a site's gateway: `spiffe://<domain>/org/<org>/gw/<site>`.
///
/// Informational: authorisation uses the org from the verified DNS SAN; the verifier only checks
/// that a SPIFFE ID, when present, names the same trust domain and org.
pub fn gateway_spiffe_id(site: &str, org: &str, domain: &str) -> String {
    format!("spiffe://{domain}/org/{org}/gw/{site}")
}

/// The SPIFFE ID of one replica of a site's gateway:
/// `spiffe://<domain>/org/<org>/gw/<site>/replica/<replica>`, or [`gateway_spiffe_id`] for the
/// site's first gateway (`replica` empty). Every replica of a site shares the DNS name
/// [`gateway_dns_name`]; only this URI tells them apart.
pub fn replica_spiffe_id(site: &str, replica: &str, org: &str, domain: &str) -> String {
    if replica.is_empty() {
        gateway_spiffe_id(site, org, domain)
    } else {
        format!("spiffe://{domain}/org/{org}/gw/{site}/replica/{replica}")
    }
}

/// Reads `(site, replica)` from a gateway SPIFFE ID of `org` in `domain`:
/// `.../gw/<site>` gives an empty replica, `.../gw/<site>/replica/<replica>` the replica.
/// `None` for any other shape or a part that is not a DNS label.
pub fn gateway_of_spiffe_id<'a>(
    uri: &'a str,
    org: &str,
    domain: &str,
) -> Option<(&'a str, &'a str)> {
    let path = uri.strip_prefix("spiffe://")?.strip_prefix(domain)?;
    let rest = path.strip_prefix("/org/")?.strip_prefix(org)?;
    let rest = rest.strip_prefix("/gw/")?;
    let (site, replica) = match rest.split_once('/') {
        None => (rest, ""),
        Some((site, tail)) => {
            let replica = tail.strip_prefix("replica/")?;
            validate_label("replica", replica).ok()?;
            (site, replica)
        }
    };
    validate_label("site", site).ok()?;
    Some((site, replica))
}

/// Returns the org a DNS name belongs to: the label just left of `domain` in
/// `<...>.<org>.<domain>`, or `None` if the name is not strictly below the domain.
pub fn org_of_dns_name<'a>(name: &'a str, domain: &str) -> Option<&'a str> {
    let rest = name.strip_suffix(domain)?.strip_suffix('.')?;
    let org = rest.rsplit('.').next()?;
    validate_label("org", org).ok()?;
    Some(org)
}

/// Returns the org a SPIFFE ID names, if it is `spiffe://<domain>/org/<org>[/...]`.
pub fn org_of_spiffe_id<'a>(uri: &'a str, domain: &str) -> Option<&'a str> {
    let path = uri.strip_prefix("spiffe://")?.strip_prefix(domain)?;
    let rest = path.strip_prefix("/org/")?;
    let org = rest.split('/').next()?;
    validate_label("org", org).ok()?;
    Some(org)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(validate_label("org", "org2").is_ok());
        assert!(validate_label("org", "a-b").is_ok());
        for bad in ["", "-a", "a-", "Org2", "a.b", "a_b", &"a".repeat(64)] {
            assert!(validate_label("org", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn domains() {
        assert!(validate_domain("domain", "acme.example").is_ok());
        for bad in [
            "acme",
            "acme.",
            ".acme.example",
            "acme..example",
            "ACME.example",
        ] {
            assert!(validate_domain("domain", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn org_from_names() {
        let d = "acme.example";
        assert_eq!(org_of_dns_name("gw-a.org2.acme.example", d), Some("org2"));
        assert_eq!(org_of_dns_name("org2.acme.example", d), Some("org2"));
        assert_eq!(org_of_dns_name("x.y.org2.acme.example", d), Some("org2"));
        assert_eq!(org_of_dns_name("acme.example", d), None);
        assert_eq!(org_of_dns_name("gw.org2.xacme.example", d), None);
        assert_eq!(org_of_dns_name("gw.org2.other.test", d), None);
        assert_eq!(
            org_of_spiffe_id("spiffe://acme.example/org/org2/gw/a", d),
            Some("org2")
        );
        assert_eq!(org_of_spiffe_id("spiffe://evil.example/org/org2", d), None);
        assert_eq!(
            gateway_of_spiffe_id("spiffe://acme.example/org/org2/gw/dc1", "org2", d),
            Some(("dc1", ""))
        );
        let r2 = replica_spiffe_id("dc1", "r2", "org2", d);
        assert_eq!(r2, "spiffe://acme.example/org/org2/gw/dc1/replica/r2");
        assert_eq!(gateway_of_spiffe_id(&r2, "org2", d), Some(("dc1", "r2")));
        assert_eq!(
            replica_spiffe_id("dc1", "", "org2", d),
            gateway_spiffe_id("dc1", "org2", d)
        );
        for bad in [
            "spiffe://acme.example/org/org3/gw/dc1",
            "spiffe://acme.example/org/org2/gw/dc1/x/r2",
            "spiffe://acme.example/org/org2/gw/dc1/replica/",
            "spiffe://acme.example/org/org2/gw/dc1/replica/r2/x",
            "spiffe://acme.example/org/org2/node/dc1",
        ] {
            assert_eq!(gateway_of_spiffe_id(bad, "org2", d), None, "{bad}");
        }
        assert_eq!(org_of_spiffe_id("spiffe://acme.example/x/org2", d), None);
    }
}
