//! `fedgw node add` options for Fabric and IPFS nodes: `--service NAME=PORT`,
//! `--ipfs-peer-id ID` and `--tls-cert FILE`, checked here with the same rules the gateway
//! applies to the record ([`fedgw_proto::service`]), so a typo fails before the gateway is asked.

use std::path::Path;

use fedgw_proto::service::{IpfsPeerId, MAX_SERVICES, MAX_TLS_CERT, ServiceName, check_tls_cert};
use fedgw_proto::v1 as pb;

/// Parses `--service` values (`NAME=PORT`, e.g. `peer=7051`): names unique, at most
/// [`MAX_SERVICES`]. Errors are one line naming the value and the rule.
pub fn services(values: &[String]) -> Result<Vec<pb::NamedService>, String> {
    if values.len() > MAX_SERVICES {
        return Err(format!(
            "--service given {} times, at most {MAX_SERVICES}",
            values.len()
        ));
    }
    let mut out: Vec<pb::NamedService> = Vec::with_capacity(values.len());
    for v in values {
        let (name, port) = v
            .split_once('=')
            .ok_or_else(|| format!("--service {v}: write NAME=PORT, e.g. peer=7051"))?;
        let name = ServiceName::new(name).ok_or_else(|| {
            format!(
                "--service {v}: a name is 1 to 15 lowercase letters, digits or inner hyphens, \
                 starts with a letter, and is not p2p, raft or tessera"
            )
        })?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("--service {v}: the port must be 1 to 65535"))?;
        if out.iter().any(|s| s.name == name.as_str()) {
            return Err(format!("--service {name} is given twice"));
        }
        out.push(pb::NamedService {
            name: name.as_str().to_owned(),
            port: u32::from(port),
        });
    }
    Ok(out)
}

/// Checks an `--ipfs-peer-id` value (base58btc multihash, `12D3KooW...` or `Qm...`).
pub fn ipfs_peer_id(id: &str) -> Result<String, String> {
    IpfsPeerId::new(id)
        .map(|id| id.as_str().to_owned())
        .ok_or_else(|| {
            format!(
                "--ipfs-peer-id {id}: not an IPFS peer id (base58 multihash, as `ipfs-cluster-ctl \
                 id` prints it: 12D3KooW... or Qm...)"
            )
        })
}

/// Reads `--tls-cert FILE`: one certificate in PEM (`-----BEGIN CERTIFICATE-----`) or DER,
/// at most [`MAX_TLS_CERT`] bytes of DER; returns the DER.
pub fn tls_cert(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let err = |e: &dyn std::fmt::Display| format!("--tls-cert {}: {e}", path.display());
    // PEM is about 4/3 of DER plus armour
    let limit = (MAX_TLS_CERT * 2) as u64;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(|e| err(&e))?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(&e))?;
    if bytes.len() as u64 > limit {
        return Err(err(&format_args!(
            "larger than {limit} bytes; a TLS certificate is a few KiB"
        )));
    }
    let der = if bytes.starts_with(b"-----BEGIN") {
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(&bytes).map_err(|_| err(&"not a PEM certificate"))?;
        if pem.label != "CERTIFICATE" {
            return Err(err(&format_args!(
                "holds a {:?}, not a CERTIFICATE",
                pem.label
            )));
        }
        pem.contents
    } else {
        bytes
    };
    check_tls_cert(&der).map_err(|e| err(&e))?;
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_values_are_checked_and_named_in_errors() {
        let ok = services(&["peer=7051".into(), "chaincode=7052".into()]).expect("valid");
        assert_eq!(
            ok.iter()
                .map(|s| (s.name.as_str(), s.port))
                .collect::<Vec<_>>(),
            [("peer", 7051), ("chaincode", 7052)]
        );
        for (bad, says) in [
            ("peer", "NAME=PORT"),
            ("Peer=7051", "lowercase"),
            ("p2p=7051", "not p2p"),
            ("peer=0", "1 to 65535"),
            ("peer=70510", "1 to 65535"),
        ] {
            let e = services(&[bad.into()]).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = services(&["peer=1".into(), "peer=2".into()]).expect_err("twice");
        assert!(e.contains("twice"), "{e}");
        let many: Vec<String> = (0..=MAX_SERVICES).map(|i| format!("s{i}=1")).collect();
        assert!(services(&many).is_err());
    }

    #[test]
    fn tls_certs_are_read_as_pem_or_der() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = rcgen::generate_simple_self_signed(vec!["orderer0.org1.acme.test".into()])
            .expect("test certificate");
        let der = cert.cert.der().to_vec();
        let pem_path = dir.path().join("tls.pem");
        std::fs::write(&pem_path, cert.cert.pem()).expect("write");
        assert_eq!(tls_cert(&pem_path).expect("pem"), der);
        let der_path = dir.path().join("tls.der");
        std::fs::write(&der_path, &der).expect("write");
        assert_eq!(tls_cert(&der_path).expect("der"), der);
        let key_path = dir.path().join("key.pem");
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write");
        assert!(
            tls_cert(&key_path)
                .expect_err("a key")
                .contains("not a CERTIFICATE")
        );
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"junk").expect("write");
        assert!(tls_cert(&junk).is_err());
    }

    #[test]
    fn peer_ids_are_checked() {
        let id = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
        assert_eq!(ipfs_peer_id(id).as_deref(), Ok(id));
        assert!(ipfs_peer_id("12D3KooW0").is_err());
    }
}
