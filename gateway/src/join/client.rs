//! The joiner's side: dial the inviter, verify it against the token's root pin before sending
//! anything, prove possession of the token secret, and check what comes back.

use std::sync::Arc;
use std::time::Duration;

use fedgw_certs::token::{self, JoinToken, JoinTranscript};
use fedgw_certs::verify::{PeerRejection, PinnedRootVerifier, peer_rejection};
use fedgw_certs::{pki, tls};
use fedgw_proto::v1::join_client::JoinClient;
use fedgw_proto::v1::join_response::Outcome;
use fedgw_proto::v1::{Admitted, JoinRequest, RefusalReason};
use rustls_pki_types::CertificateDer;
use sha2::Digest;

use crate::net;

/// Why a join failed. Each variant maps to its own exit code in the CLI.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The inviter could not be reached (DNS, TCP connect, timeout, or TLS failure other than
    /// the pin).
    #[error("cannot reach the inviting gateway at {endpoint}: {reason}")]
    Unreachable {
        /// The token's endpoint.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The server's chain does not end at the pinned root. Nothing was sent.
    #[error(
        "the gateway at {0} is not the consortium in the token (root pin mismatch); nothing was sent"
    )]
    PinMismatch(String),
    /// The inviter refused the request.
    #[error("join refused: {detail}")]
    Refused {
        /// The typed reason.
        reason: RefusalReason,
        /// The server's explanation.
        detail: String,
    },
    /// The inviter answered something that does not check out.
    #[error("invalid join response: {0}")]
    InvalidResponse(String),
    /// The admission policy was not met before the timeout.
    #[error(
        "not admitted in time: {approvals} of {needed} approvals ({}); ask the members' \
         operators to run `fedgw approve <this org>`, then run this `fedgw join` again (a \
         longer --timeout waits longer)",
        approvers(approved_by)
    )]
    NotApproved {
        /// Approvals so far.
        approvals: u32,
        /// Approvals needed.
        needed: u32,
        /// Who approved, comma-separated.
        approved_by: String,
    },
}

/// `approved by a, b`, or `nobody approved yet` for an empty list.
fn approvers(approved_by: &str) -> String {
    if approved_by.is_empty() {
        "nobody approved yet".to_owned()
    } else {
        format!("approved by {approved_by}")
    }
}

/// How often a pending joiner asks again.
pub const PENDING_POLL: Duration = Duration::from_millis(500);

enum Attempt {
    Admitted(Box<Joined>),
    Pending(fedgw_proto::v1::Pending),
}

/// Runs the join exchange, asking again every [`PENDING_POLL`] while the admission is pending
/// (each time over a new connection with a new proof), until admitted, refused, or
/// `params.timeout` has passed. `progress` sees every pending answer.
pub async fn join(
    params: &JoinParams,
    csr_der: &[u8],
    org_ca_spki: &[u8],
    progress: &(dyn Fn(&fedgw_proto::v1::Pending) + Sync),
) -> Result<Joined, JoinError> {
    let deadline = tokio::time::Instant::now() + params.timeout;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt_params = JoinParams {
            timeout: remaining.max(Duration::from_millis(1)),
            ..params.clone()
        };
        match attempt(&attempt_params, csr_der, org_ca_spki).await? {
            Attempt::Admitted(j) => return Ok(*j),
            Attempt::Pending(p) => {
                progress(&p);
                if tokio::time::Instant::now() + PENDING_POLL >= deadline {
                    return Err(JoinError::NotApproved {
                        approvals: p.approvals,
                        needed: p.needed,
                        approved_by: p.approved_by.join(", "),
                    });
                }
                tokio::time::sleep(PENDING_POLL).await;
            }
        }
    }
}

/// What the joiner sends besides its CSR.
#[derive(Debug, Clone)]
pub struct JoinParams {
    /// The parsed token.
    pub token: JoinToken,
    /// The org to join as.
    pub org: String,
    /// This site's label.
    pub site: String,
    /// This gateway's advertised endpoints.
    pub advertise: Vec<String>,
    /// The Fabric MSP ID asked for (empty: `<Org>MSP`).
    pub fabric_msp_id: String,
    /// Bound on the whole exchange.
    pub timeout: Duration,
}

/// A successful join, checked: the root matches the pin, the org CA certifies the joiner's own
/// key, and the genesis file matches its hash.
#[derive(Debug)]
pub struct Joined {
    /// The admission as received.
    pub admitted: Admitted,
    /// The consortium root certificate.
    pub root: CertificateDer<'static>,
    /// The org CA certificate.
    pub org_ca: CertificateDer<'static>,
}

/// One join exchange for an org CA key whose CSR is `csr_der`.
async fn attempt(
    params: &JoinParams,
    csr_der: &[u8],
    org_ca_spki: &[u8],
) -> Result<Attempt, JoinError> {
    let endpoint = params.token.endpoint.clone();
    let unreachable = |reason: String| JoinError::Unreachable {
        endpoint: endpoint.clone(),
        reason,
    };
    let provider = tls::provider();
    let verifier = Arc::new(PinnedRootVerifier::new(params.token.root_pin, &provider));
    let config = Arc::new(
        tls::join_client_config(verifier.clone(), provider)
            .map_err(|e| unreachable(e.to_string()))?,
    );

    let exchange = async {
        let tls = net::dial_tls(&endpoint, config, params.timeout)
            .await
            .map_err(|e| match e.tls_error().and_then(peer_rejection) {
                Some(PeerRejection::PinMismatch) => JoinError::PinMismatch(endpoint.clone()),
                _ => unreachable(net::with_sources(&e)),
            })?;
        let binding = tls
            .get_ref()
            .1
            .export_keying_material([0u8; 32], token::JOIN_EXPORTER_LABEL, None)
            .map_err(|e| unreachable(e.to_string()))?;
        let transcript = JoinTranscript {
            token_id: &params.token.id,
            org: &params.org,
            site: &params.site,
            csr_der,
            advertise: &params.advertise,
            fabric_msp_id: &params.fabric_msp_id,
            channel_binding: &binding,
        };
        let request = JoinRequest {
            version: fedgw_proto::JOIN_PROTOCOL_VERSION,
            token_id: params.token.id.clone(),
            org: params.org.clone(),
            site: params.site.clone(),
            csr_der: csr_der.to_vec(),
            advertise: params.advertise.clone(),
            proof: token::join_proof(&params.token, &transcript).to_vec(),
            fabric_msp_id: params.fabric_msp_id.clone(),
        };
        let channel = net::single_use_channel(tls)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut client = JoinClient::new(channel)
            .max_decoding_message_size(fedgw_proto::MAX_JOIN_RESPONSE_BYTES);
        client
            .join(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| unreachable(format!("join call failed: {}", s.message())))
    };
    let response = tokio::time::timeout(params.timeout, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {:?}", params.timeout)))??;

    let admitted = match response.outcome {
        Some(Outcome::Admitted(a)) => a,
        Some(Outcome::Pending(p)) => return Ok(Attempt::Pending(p)),
        Some(Outcome::Refused(r)) => {
            return Err(JoinError::Refused {
                reason: RefusalReason::try_from(r.reason).unwrap_or(RefusalReason::Unspecified),
                detail: r.detail,
            });
        }
        None => return Err(JoinError::InvalidResponse("empty outcome".into())),
    };
    check_admitted(params, admitted, verifier.root(), org_ca_spki)
        .map(|j| Attempt::Admitted(Box::new(j)))
}

fn check_admitted(
    params: &JoinParams,
    admitted: Admitted,
    pinned_root: Option<CertificateDer<'static>>,
    org_ca_spki: &[u8],
) -> Result<Joined, JoinError> {
    let invalid = |m: &str| JoinError::InvalidResponse(m.to_owned());
    let root = pinned_root.ok_or_else(|| invalid("no pinned root seen"))?;
    if admitted.root_ca_der != root.as_ref() {
        return Err(invalid("root certificate differs from the pinned one"));
    }
    let consortium = admitted
        .consortium
        .as_ref()
        .ok_or_else(|| invalid("consortium info missing"))?;
    fedgw_certs::names::validate_label("consortium", &consortium.name)
        .map_err(|e| invalid(&e.to_string()))?;
    fedgw_certs::names::validate_domain("domain", &consortium.domain)
        .map_err(|e| invalid(&e.to_string()))?;
    let (_, org_ca) = x509_parser::parse_x509_certificate(&admitted.org_ca_der)
        .map_err(|_| invalid("org CA does not parse"))?;
    if org_ca.public_key().raw != org_ca_spki {
        return Err(invalid("org CA certifies another key"));
    }
    let constraint_ok =
        fedgw_certs::envelope::org_of_org_ca(&admitted.org_ca_der, &consortium.domain)
            .is_some_and(|org| org == params.org);
    if !constraint_ok {
        return Err(invalid("org CA lacks the expected name constraint"));
    }
    if !admitted.genesis.is_empty()
        && sha2::Sha256::digest(&admitted.genesis).as_slice() != admitted.genesis_sha256.as_slice()
    {
        return Err(invalid("genesis file does not match its hash"));
    }
    let org_ca = CertificateDer::from(admitted.org_ca_der.clone());
    Ok(Joined {
        admitted,
        root,
        org_ca,
    })
}

/// Why joining into a data dir failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinDirError {
    /// The data dir already holds a gateway's files (this one, the first found).
    #[error("{} already exists: the data dir holds a gateway; use an empty directory", .0.display())]
    Exists(std::path::PathBuf),
    /// A name is invalid.
    #[error(transparent)]
    Name(#[from] fedgw_certs::names::NameError),
    /// Key or CSR generation failed.
    #[error("generating the org CA key")]
    Key(#[source] fedgw_certs::PkiError),
    /// The exchange with the inviter failed.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// Writing the data dir failed.
    #[error("writing the data dir")]
    Provision(#[source] crate::provision::ProvisionError),
    /// Creating the data dir failed.
    #[error("creating {0}")]
    Create(std::path::PathBuf, #[source] std::io::Error),
}

/// Joins with `token` as `org` and, once admitted, writes the data dir `dir`: generates the org
/// CA key locally (it is never sent), runs [`join`], then [`crate::provision::write_joined`].
/// Nothing is written unless the join succeeds.
pub async fn join_into(
    token: JoinToken,
    org: &str,
    dir: &crate::datadir::DataDir,
    network: &crate::provision::NetworkOptions,
    timeout: Duration,
    progress: &(dyn Fn(&fedgw_proto::v1::Pending) + Sync),
) -> Result<crate::config::Config, JoinDirError> {
    fedgw_certs::names::validate_label("org", org)?;
    if let Some(file) = dir.occupied() {
        return Err(JoinDirError::Exists(file));
    }
    let key = pki::generate_key().map_err(JoinDirError::Key)?;
    let csr = pki::org_ca_csr(&key, org).map_err(JoinDirError::Key)?;
    let params = JoinParams {
        token,
        org: org.to_owned(),
        site: network.site.clone(),
        advertise: network.advertise.clone(),
        fabric_msp_id: network.fabric_msp_id.clone().unwrap_or_default(),
        timeout,
    };
    let joined = join(&params, &csr, &pki::spki_der(&key), progress).await?;
    dir.create_fresh()
        .map_err(|e| JoinDirError::Create(dir.root().to_owned(), e))?;
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    crate::provision::write_joined(
        dir,
        &crate::provision::JoinedFiles {
            org,
            admitted: &joined.admitted,
            root: &joined.root,
            org_ca: &joined.org_ca,
            org_key_pem: &key_pem,
            network,
        },
        std::time::SystemTime::now(),
    )
    .map_err(JoinDirError::Provision)
}
