//! Hyperledger Fabric client configs from the consortium's view (docs/fabric.md): pure
//! functions the gateway's `fedgw render fabric-*` and the Kubernetes controller's ConfigMap
//! share.
//!
//! - [`render`]: the common connection profile, configtx.yaml `Organizations` and the etcdraft
//!   consenter list, over [`render::FabricOrg`];
//! - [`view`]: the adapter from members and node records to [`render::FabricOrg`]s;
//! - MSP IDs: [`default_msp_id`] and [`validate_msp_id`], the rules every gateway applies to
//!   the `fabric_msp_id` of a member record.

pub mod render;
pub mod view;

/// Longest accepted Fabric MSP ID, in bytes (Fabric sets no limit; fedgw keeps records small).
pub const MAX_MSP_ID_LEN: usize = 64;

/// The default Fabric MSP ID of an org: the org name with its first letter upper-cased and
/// `MSP` appended (`org2` → `Org2MSP`), as the Fabric samples name theirs.
pub fn default_msp_id(org: &str) -> String {
    let mut chars = org.chars();
    match chars.next() {
        Some(first) => format!("{}{}MSP", first.to_ascii_uppercase(), chars.as_str()),
        None => "MSP".to_owned(),
    }
}

/// An MSP ID that is not usable.
#[derive(Debug, thiserror::Error)]
#[error(
    "Fabric MSP ID {0:?} is not valid: use 1 to 64 ASCII letters, digits, '.', '-' or '_' \
     (for example Org2MSP)"
)]
pub struct MspIdError(pub String);

/// Checks a Fabric MSP ID: 1 to [`MAX_MSP_ID_LEN`] ASCII letters, digits, `.`, `-`, `_`. Fabric
/// itself accepts any string, but the ID lands unquoted in policy rules
/// (`OR('Org2MSP.peer')`) and YAML, where these characters need no escaping.
pub fn validate_msp_id(id: &str) -> Result<(), MspIdError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_MSP_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(MspIdError(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_msp_id_capitalises_the_org_as_fabric_samples_do() {
        assert_eq!(default_msp_id("org2"), "Org2MSP");
        assert_eq!(default_msp_id("acme-bank"), "Acme-bankMSP");
    }

    #[test]
    fn msp_ids_with_quotes_spaces_or_excess_length_are_refused() {
        assert!(validate_msp_id("Org2MSP").is_ok());
        assert!(validate_msp_id("org2.msp_1-x").is_ok());
        for bad in ["", "Org2 MSP", "Org2'MSP", "Org2:MSP", &"x".repeat(65)] {
            assert!(validate_msp_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
