//! `fedgw audit` and `fedgw certs`: the audit trail and the certificates each org published.
//!
//! While the gateway runs, both read over the admin socket; `fedgw audit` reads the store
//! directly when the gateway is stopped. `fedgw audit --verify` needs the store itself (the
//! gateway stopped): it re-checks the hash chain and every stored record's signature, and exits
//! 21 on the first break, naming the entry or record.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use fedgw_proto::v1 as pb;

use super::admin_conn::{connect, connect_if_running};
use super::{AdminDirArg, CliError, exit, usage};
use crate::datadir::DataDir;
use crate::provision;
use crate::store::{AuditEntry, AuditFilter, Store, StoreError, audit_entries};

/// `fedgw audit` arguments.
#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    dir: AdminDirArg,
    /// Only entries from this time on: RFC 3339 (2026-12-07T10:00:00Z) or an age (90m, 7d).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    since: Option<u64>,
    /// Only entries about this org.
    #[arg(long, value_name = "ORG")]
    org: Option<String>,
    /// Only entries of this kind (node, tombstone.node, invite.used, cert, ...); a kind ending
    /// in '.' selects every kind it begins (chain., invite.).
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// Print JSON, one array of entries.
    #[arg(long)]
    json: bool,
    /// Re-check the hash chain and every stored record's signature (the gateway must be
    /// stopped); exit 21 naming the first entry or record that was tampered with.
    #[arg(long, conflicts_with_all = ["since", "org", "kind", "compare"])]
    verify: bool,
    /// Compare the digest of the records held here with another gateway's (its gateway port,
    /// over mutual TLS with this data dir's certificate); exit 22 listing the records that
    /// differ.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["since", "org", "kind"])]
    compare: Option<String>,
    /// Bound on the call to the other gateway (--compare).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Parses `--since`: an RFC 3339 time or an age before now, to Unix milliseconds.
fn parse_since(s: &str) -> Result<u64, String> {
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let age = humantime::parse_duration(s).map_err(|_| {
                format!("{s:?} is neither a time (2026-12-07T10:00:00Z) nor an age (90m, 7d)")
            })?;
            SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH)
        }
    };
    Ok(t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

pub(crate) async fn audit(args: AuditArgs) -> Result<(), CliError> {
    if args.verify {
        return verify(&args.dir);
    }
    if let Some(endpoint) = &args.compare {
        return compare(&args.dir, endpoint, args.json, args.timeout).await;
    }
    let filter = AuditFilter {
        since_ms: args.since,
        org: args.org.clone(),
        kind: args.kind.clone(),
        limit: None,
    };
    let entries = match connect_if_running(&args.dir).await {
        Some(mut admin) => {
            let resp = admin_call!(
                admin,
                list_audit(pb::ListAuditRequest {
                    since_ms: filter.since_ms.unwrap_or(0),
                    org: filter.org.clone().unwrap_or_default(),
                    kind: filter.kind.clone().unwrap_or_default(),
                    limit: 0,
                })
            );
            if resp.truncated {
                eprintln!(
                    "older entries left out (the answer is bounded to 1 MiB): narrow with --since, --org or --kind, or stop the gateway to read the store whole"
                );
            }
            resp.entries_json
                .iter()
                .map(|j| serde_json::from_str::<AuditEntry>(j))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    CliError::new(
                        exit::FAILURE,
                        anyhow::anyhow!(
                            "the gateway sent an audit entry this fedgw cannot read: {e}"
                        ),
                    )
                })?
        }
        None => {
            let store = open_store(&args.dir)?;
            audit_entries(&store, &filter).map_err(|e| CliError::new(exit::FAILURE, e))?
        }
    };
    if args.json {
        let text = serde_json::to_string(&entries)
            .map_err(|e| CliError::new(exit::FAILURE, anyhow::Error::new(e)))?;
        outln!("{text}")?;
        return Ok(());
    }
    outln!(
        "{:>6} {:<24} {:<18} {:<10} {:<24} {:<8} record",
        "seq",
        "time",
        "kind",
        "org",
        "subject",
        "signer"
    )?;
    for e in &entries {
        let time = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(e.time_ms));
        outln!(
            "{:>6} {:<24} {:<18} {:<10} {:<24} {:<8} {}",
            e.seq,
            time.to_string(),
            e.kind,
            e.org,
            e.subject,
            e.signer,
            e.record_hash.get(..16).unwrap_or(&e.record_hash)
        )?;
    }
    Ok(())
}

/// Opens the store of a stopped gateway; a running one (the store locked) is a usage error.
fn open_store(dir: &AdminDirArg) -> Result<Store, CliError> {
    let path = DataDir::new(dir.data_dir.clone()).store();
    if !path.exists() {
        return Err(usage(format!(
            "{} does not exist: is --data-dir the gateway's data directory?",
            path.display()
        )));
    }
    Store::open(&path).map_err(|e| match e {
        StoreError::Locked => usage(
            "the gateway holds the store: stop it to verify the audit trail (listing works while it runs)",
        ),
        StoreError::Damaged { .. } => CliError::new(exit::STORE_DAMAGED, e),
        e => CliError::new(exit::FAILURE, e),
    })
}

fn verify(dir: &AdminDirArg) -> Result<(), CliError> {
    let data = DataDir::new(dir.data_dir.clone());
    let loaded = provision::load(&data).map_err(|e| CliError::new(exit::USAGE, e))?;
    let store = open_store(dir)?;
    let verifier = fedgw_certs::envelope::SignerVerifier::new(
        loaded.root_cert.to_vec(),
        &loaded.config.domain,
    )
    .map_err(|e| CliError::new(exit::USAGE, anyhow::anyhow!("the root certificate: {e}")))?;
    match crate::membership::trail::verify_trail(
        &store,
        verifier,
        &loaded.config.domain,
        SystemTime::now(),
    ) {
        Ok(r) => {
            outln!(
                "audit trail intact: {} entries chained, {} stored records verified and recorded",
                r.entries,
                r.records
            )?;
            Ok(())
        }
        Err(crate::membership::trail::TrailError::Store(e)) => Err(CliError::new(exit::FAILURE, e)),
        Err(e) => Err(CliError::new(exit::TAMPERED, e)),
    }
}

async fn compare(
    dir: &AdminDirArg,
    endpoint: &str,
    json: bool,
    timeout: Duration,
) -> Result<(), CliError> {
    use crate::federation::{audit_digest, digest_from_msg};
    let ours = match connect_if_running(dir).await {
        Some(mut admin) => {
            let resp = admin_call!(admin, audit_digest(pb::AuditDigestRequest {}));
            digest_from_msg(&resp)
        }
        None => {
            let d = open_store(dir)?
                .records_digest()
                .map_err(|e| CliError::new(exit::FAILURE, e))?;
            (d.digest, Some(d))
        }
    };
    let data = DataDir::new(dir.data_dir.clone());
    let (loaded, config) =
        provision::federation_client_config(&data, None).map_err(|e| match e {
            provision::ProvisionError::Config(_) => CliError::new(exit::USAGE, e),
            e => CliError::new(exit::FAILURE, e),
        })?;
    let (peer, resp) = audit_digest(endpoint, config, &loaded.config.domain, timeout)
        .await
        .map_err(|e| {
            CliError::new(
                exit::UNREACHABLE,
                anyhow::anyhow!("{}", crate::net::with_sources(&e)),
            )
        })?;
    let theirs = digest_from_msg(&resp);
    let hex = |d: &[u8; 32]| crate::store::audit::hex32(d);
    let agree = ours.0 == theirs.0;
    let differences = match (&ours.1, &theirs.1) {
        (Some(a), Some(b)) => Some(a.differences(b)),
        _ => None,
    };
    if json {
        let v = serde_json::json!({
            "peer": peer.dns_name, "agree": agree,
            "ours": hex(&ours.0), "theirs": hex(&theirs.0),
            "differences": differences,
        });
        outln!("{v}")?;
    } else if agree {
        outln!(
            "in agreement with {} ({}): {} records, digest {}",
            endpoint,
            peer.dns_name,
            resp.count,
            hex(&ours.0)
        )?;
    } else {
        outln!(
            "{} ({}) holds other records: digest {} here, {} there",
            endpoint,
            peer.dns_name,
            hex(&ours.0),
            hex(&theirs.0)
        )?;
        match &differences {
            Some(diff) => {
                for d in diff {
                    let short = |h: &Option<String>| {
                        h.as_deref()
                            .map_or("absent".to_owned(), |h| h.get(..16).unwrap_or(h).to_owned())
                    };
                    outln!(
                        "  {:<40} here {:<16} there {}",
                        d.key,
                        short(&d.ours),
                        short(&d.theirs)
                    )?;
                }
            }
            None => outln!("  (too many records to list; compare `fedgw audit` on both sides)")?,
        }
    }
    if agree {
        Ok(())
    } else {
        Err(CliError::new(
            exit::DIFFERENT,
            anyhow::anyhow!(
                "the records here and at {endpoint} differ; they converge by sync unless a link is down (`fedgw status`)"
            ),
        ))
    }
}

/// `fedgw certs` arguments.
#[derive(Debug, Args)]
pub(crate) struct CertsArgs {
    #[command(flatten)]
    dir: AdminDirArg,
    /// Only this org's certificates.
    #[arg(long, value_name = "ORG")]
    org: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn certs(args: CertsArgs) -> Result<(), CliError> {
    let mut admin = connect(&args.dir).await?;
    let resp = admin_call!(
        admin,
        list_certs(pb::ListCertsRequest {
            org: args.org.unwrap_or_default(),
        })
    );
    let rows: Vec<(String, pb::CertRecord)> = resp
        .certs
        .into_iter()
        .filter_map(|c| Some((c.org, c.cert?)))
        .collect();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(org, c)| {
                serde_json::json!({
                    "org": org, "serial": c.serial, "subject": c.subject, "sans": c.sans,
                    "not_after_unix": c.not_after_unix, "spki_sha256": hex(&c.spki_sha256),
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(list))?;
        return Ok(());
    }
    outln!("{:<10} {:<34} {:<20} names", "org", "serial", "not after")?;
    for (org, c) in &rows {
        let not_after = u64::try_from(c.not_after_unix).map_or_else(
            |_| "-".to_owned(),
            |s| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string(),
        );
        outln!(
            "{:<10} {:<34} {:<20} {}",
            org,
            c.serial,
            not_after,
            c.sans.join(",")
        )?;
    }
    Ok(())
}
